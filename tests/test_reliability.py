"""Faults at the edges: insecure links, a full disk, damaged checkpoints, non-finite numbers, killed
helpers, stops. Each test injects one fault through the real entry point and checks what is kept
and what the user is told."""

from __future__ import annotations

import pytest

from exmachina.config import ConfigError, config_from_dict
from tests.helpers import run_learn, write_config, xor_config

CLEAR_TCP = {"transport": "tcp", "curve": "off"}


@pytest.mark.unit
def test_curve_off_on_a_host_others_reach_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match=r"runtime\.curve: off over tcp on 10\.1\.2\.3: .*allow_clear_tcp"):
        config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3"}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "10.1.2.3", "allow_clear_tcp": True}))
    config_from_dict(xor_config(runtime={**CLEAR_TCP, "host": "127.0.0.1"}))


def test_curve_off_over_tcp_is_warned_about_at_start(tmp_path):
    path = write_config(tmp_path, xor_config(runtime=CLEAR_TCP, training={"epochs": 2}))
    result = run_learn(path)
    assert result.returncode == 0, result.stderr
    assert "WARNING: curve: off over tcp" in result.stderr
