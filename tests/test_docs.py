"""The docs against the code: every config key documented with its default, every command shown
exists, every relative link leads somewhere, the README stays short and for users."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

import exmachina
from exmachina.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
REQUIRED_DOCS = (
    "configuration",
    "inspecting",
    "performance",
    "security",
    "several-hosts",
    "experiments",
    "architecture",
)
# How a development diary reads; README and docs are for users (history belongs in CHANGELOG.md).
DIARY = re.compile(r"#[0-9]+ note|this session|earlier session|/tmp script|tried and dropped|we tried", re.I)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _unwrap(hint: Any) -> Any:
    """`X | None` -> X; anything else as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def _item_dataclass(hint: Any) -> type | None:
    """The dataclass a key holds (directly, or as the items of a list), if any."""
    hint = _unwrap(hint)
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return item if dataclasses.is_dataclass(item) else None
    return None


def config_keys(cls: type = Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every key a config file may hold, dotted (`runtime.log_level`, `network.layers[].size`)."""
    keys = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("yaml", True):
            continue
        key = f"{prefix}{f.name}"
        keys[key] = f
        inner = _item_dataclass(hints[f.name])
        if inner is not None:
            is_list = typing.get_origin(_unwrap(hints[f.name])) is list
            keys.update(config_keys(inner, f"{key}[]." if is_list else f"{key}."))
    return keys


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def documented_default(f: dataclasses.Field) -> str:
    """What the default column must say for a field."""
    if f.default is not dataclasses.MISSING:
        return f"`{_yaml_text(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        made = f.default_factory()
        return "all defaults" if dataclasses.is_dataclass(made) else f"`{_yaml_text(made)}`"
    return "required"


def configuration_rows() -> dict[str, str]:
    """`| `key` | default | meaning |` rows of docs/configuration.md: key -> default cell."""
    rows = {}
    for line in CONFIGURATION.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


@pytest.mark.unit
def test_the_walk_finds_nested_keys():
    keys = config_keys()
    assert {"name", "runtime.curve", "network.layers[].activation", "placement.startup_timeout"} <= set(keys)
    assert "source" not in keys  # not a YAML key: the file the config came from


@pytest.mark.unit
def test_every_config_key_is_documented_with_its_default():
    rows = configuration_rows()
    keys = config_keys()
    missing = [key for key in keys if key not in rows]
    assert not missing, f"docs/configuration.md lacks a row for: {', '.join(missing)}"
    expected = {key: documented_default(f) for key, f in keys.items()}
    wrong = {key: (rows[key], default) for key, default in expected.items() if rows[key] != default}
    assert not wrong, f"docs/configuration.md: default (documented, in the code): {wrong}"
    unknown = [key for key in rows if key not in keys]
    assert not unknown, f"docs/configuration.md documents keys the config does not have: {unknown}"


def _check_keys(raw: Any, cls: type, where: str) -> list[str]:
    """Keys of a YAML fragment that the config schema does not have."""
    if not isinstance(raw, dict):
        return []
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    bad = []
    for key, value in raw.items():
        if key not in fields:
            bad.append(f"{where}{key}")
            continue
        inner = _item_dataclass(hints[key])
        if inner is None:
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            bad += _check_keys(item, inner, f"{where}{key}.")
    return bad


def code_blocks(text: str, language: str = "[a-z]*") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.unit
def test_yaml_examples_use_only_real_keys():
    for path in markdown_files():
        for block in code_blocks(path.read_text(), "yaml"):
            bad = _check_keys(yaml.safe_load(block), Config, "")
            assert not bad, f"{path.name}: a yaml example uses keys the config does not have: {bad}"


@pytest.mark.unit
def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; details belong in docs/"


@pytest.mark.unit
def test_every_topic_has_its_page():
    for topic in REQUIRED_DOCS:
        assert (DOCS / f"{topic}.md").is_file(), f"docs/{topic}.md is missing"


@pytest.mark.unit
def test_no_development_diary_in_readme_or_docs():
    for path in markdown_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not DIARY.search(line), f"{path.name}:{number}: reads like a diary: {line.strip()}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.unit
def test_every_relative_link_points_at_a_file():
    files = [*markdown_files(), REPO / "CHANGELOG.md"]
    for path in files:
        for target in LINK.findall(path.read_text()):
            if re.fullmatch(r"https?://(www\.)?(github\.com|gitlab\.com|bitbucket\.org)/?", target):
                pytest.fail(f"{path.relative_to(REPO)}: placeholder link to a bare code host: {target}")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            where = (path.parent / target.split("#")[0]).resolve()
            assert where.exists(), f"{path.relative_to(REPO)}: link to {target}, which does not exist"


@pytest.mark.unit
def test_the_version_has_a_changelog_entry():
    assert f"## {exmachina.__version__}" in (REPO / "CHANGELOG.md").read_text()


def listed_subcommands() -> set[str]:
    """The commands `exmachina --help` lists."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "exmachina", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    commands = out.stdout.split("Commands", 1)[1]
    return set(re.findall(r"^\W*([a-z][a-z-]*)\s{2,}", commands, flags=re.M))


def shown_subcommands(text: str) -> set[str]:
    """`exmachina <word>` in the code of a page: fenced blocks and inline code."""
    code = "\n".join(code_blocks(text)) + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", text))
    return set(re.findall(r"\bexmachina ([a-z][a-z-]*)", code))


def test_every_command_shown_exists():
    listed = listed_subcommands()
    assert {"learn", "logs", "inspect", "ps", "trace", "view", "report"} <= listed
    for path in markdown_files():
        shown = shown_subcommands(path.read_text())
        assert shown <= listed, f"{path.name} shows commands exmachina --help does not list: {shown - listed}"
    assert {"logs", "inspect", "ps", "trace", "view", "report"} <= shown_subcommands(README.read_text())


@pytest.mark.unit
def test_every_config_the_docs_name_loads():
    named = set()
    for path in markdown_files():
        named |= set(re.findall(r"\bconfigs/[a-z0-9_-]+\.yaml\b", path.read_text()))
    assert "configs/xor.yaml" in named
    for name in sorted(named):
        load_config(REPO / name)  # raises ConfigError with the file and key at fault
