"""Neurons placed on two Ray nodes: a real local Ray cluster (a head and a second node, each with its
own resource label, both on this machine), real actors, real tcp links with CURVE."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import REPO, run_learn, start_learn, wait_for, write_config, xor_config

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'exmachina[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.timeout(420)

LAYERS = {"input": "head", "hidden1": "second", "output": "head"}


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1, labelled `head` and `second`; afterwards, prove every process
    of the cluster is gone."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=1, resources={"second": 1})
    yield nodes
    session = nodes.head_node.get_session_dir_path()
    nodes.shutdown()
    wait_for(lambda: not [p for p in me.children(recursive=True) if p.pid not in before], timeout=30)
    remove_sessions({session})


def ray_sessions(pids: list[int]) -> set[str]:
    """The Ray session directories these processes use (`--session-dir=...` in their command lines)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for arg in psutil.Process(pid).cmdline():
                key, _, value = arg.partition("=")
                if key in ("--session-dir", "--session_dir") and value.startswith("/"):
                    found.add(value)
    return found


def remove_sessions(sessions: set[str]) -> None:
    """Delete a test's own Ray sessions (and `session_latest`, if it points at one), no others."""
    for session in sessions:
        latest = Path(session).parent / "session_latest"
        if latest.is_symlink() and str(latest.resolve()) == str(Path(session).resolve()):
            latest.unlink()
        shutil.rmtree(session, ignore_errors=True)


def ray_config(cluster: Cluster, **sections) -> dict:
    placement = {"engine": "ray", "address": cluster.address, "rule": "by_layer", "layers": dict(LAYERS)}
    return xor_config(runtime={"transport": "tcp"}, placement=placement, **sections)


def run_dir(tmp_path: Path) -> Path:
    (found,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.is_symlink()]
    return found


def test_xor_split_over_two_nodes_equals_the_local_run(tmp_path, cluster):
    training = {"learning_rate": 0.5, "epochs": 40}
    (tmp_path / "ray").mkdir()
    (tmp_path / "local").mkdir()
    on_ray = run_learn(write_config(tmp_path / "ray", ray_config(cluster, training=training)), timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr
    local = run_learn(
        write_config(tmp_path / "local", xor_config(runtime={"transport": "tcp"}, training=training))
    )
    assert local.returncode == 0, local.stderr
    ray_run, local_run = run_dir(tmp_path / "ray"), run_dir(tmp_path / "local")

    # bit for bit: the same seed gives the same weights, wherever the neurons ran
    with np.load(ray_run / "model.npz") as a, np.load(local_run / "model.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name

    # each layer ran on the node its label names: inputs and output on one node, hidden on the other
    placed = dict(
        re.findall(r"neuron (\S+) ran on node (\w+)", (ray_run / "neurons" / "supervisor.log").read_text())
    )
    assert len(placed) == 6, placed
    head = {placed[n] for n in placed if not n.startswith("hidden1")}
    second = {placed[n] for n in placed if n.startswith("hidden1")}
    assert len(head) == 1 and len(second) == 1 and head != second, placed

    # the neurons' logs came home to the run directory; nothing of the run is left on the nodes
    hidden_log = (ray_run / "neurons" / "hidden1.0.log").read_text()
    assert "wired: 2 input synapses" in hidden_log and "curve: inbox is a CURVE server" in hidden_log
    assert list((ray_run / "checkpoints").glob("hidden1.0.*.ckpt"))
    assert not (Path(tempfile.gettempdir()) / "exmachina-ray").exists()


def hidden_log_with_checkpoint(tmp_path: Path, nid: str = "hidden1.1") -> Path | None:
    """While the run is on, a Ray neuron's log lives on its node: this one's, once it checkpointed."""
    for log in (Path(tempfile.gettempdir()) / "exmachina-ray").glob(f"*/xor-*/neurons/{nid}.log"):
        run = log.parent.parent
        if (tmp_path / "runs" / run.name).exists() and list(run.glob(f"checkpoints/{nid}.*")):
            return log
    return None


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The run's stderr once it has ended (killed with its group if it overstays)."""
    try:
        _out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return err


def start_with_a_checkpoint(tmp_path: Path, config: dict) -> tuple[subprocess.Popen, Path]:
    """Start a run that checkpoints every 20 updates; return it once hidden1.1 has checkpointed."""
    config["runtime"]["checkpoint_every"] = 20
    proc = start_learn(write_config(tmp_path, config))
    try:
        return proc, wait_for(lambda: hidden_log_with_checkpoint(tmp_path), timeout=240, interval=0.5)
    except BaseException:
        finish(proc)
        raise


def await_home_checkpoint(tmp_path: Path, proc: subprocess.Popen) -> None:
    """Wait for a checkpoint of hidden1.2 past the initial cut in the run directory on the driver's host."""
    home = wait_for(
        lambda: proc.poll() is not None or next((tmp_path / "runs").glob("xor-*/checkpoints"), None),
        timeout=240,
    )
    assert proc.poll() is None, proc.communicate()
    first = f"hidden1.2.{0:012d}.ckpt"  # the initial cut, written at home by the driver
    wait_for(lambda: [p for p in home.glob("hidden1.2.*.ckpt") if p.name != first], timeout=120)


def test_a_killed_neuron_is_restarted_by_its_agent_and_the_run_goes_on(tmp_path, cluster):
    config = ray_config(cluster, training={"learning_rate": 0.5, "epochs": 150})
    proc, log = start_with_a_checkpoint(tmp_path, config)
    try:
        pid = int(re.search(r"start pid=(\d+)", log.read_text())[1])
        os.kill(pid, signal.SIGKILL)
    finally:
        err = finish(proc)
    assert proc.returncode == 0, err
    run = run_dir(tmp_path)
    coordinator_log = (run / "neurons" / "coordinator.log").read_text()
    assert re.search(r"hidden1\.1 restarted \(pid \d+\) from update \d+", coordinator_log), coordinator_log
    assert "restarted: restored checkpoint at update" in (run / "neurons" / "hidden1.1.log").read_text()
    # the agent on the neuron's node restarted it, without the driver: its log says so
    (agent_log,) = [p for p in (run / "neurons").glob("agent-*.log") if "started hidden1.1 " in p.read_text()]
    assert re.search(r"restarting hidden1\.1 pid=\d+ exitcode=-9", agent_log.read_text())
    assert '"status": "completed"' in (run / "summary.json").read_text()
    assert not (Path(tempfile.gettempdir()) / "exmachina-ray").exists()


def test_a_killed_agent_is_restarted_by_ray_and_its_neurons_come_back(tmp_path, cluster):
    config = ray_config(cluster, training={"learning_rate": 0.5, "epochs": 200})
    proc, log = start_with_a_checkpoint(tmp_path, config)
    try:
        neuron = psutil.Process(int(re.search(r"start pid=(\d+)", log.read_text())[1]))
        zygote = neuron.parent()
        agent = zygote.parent()
        assert "[zygote]" in " ".join(zygote.cmdline()) or zygote.name(), zygote
        neurons = [p.pid for p in zygote.children()]
        assert len(neurons) == 3  # one agent per node: the hidden layer's three neurons
        agent.kill()
        # the zygote's lifeline: the agent's neurons end with it
        wait_for(lambda: not any(psutil.pid_exists(p) for p in neurons), timeout=60)
    finally:
        err = finish(proc)
    assert proc.returncode == 0, err
    run = run_dir(tmp_path)
    coordinator_log = (run / "neurons" / "coordinator.log").read_text()
    for i in range(3):
        assert re.search(rf"hidden1\.{i} restarted \(pid \d+\) from update \d+", coordinator_log)
    (agent_log,) = [p for p in (run / "neurons").glob("agent-*.log") if "started hidden1.1 " in p.read_text()]
    assert len(re.findall(r"agent pid=\d+", agent_log.read_text())) == 2, agent_log.read_text()
    assert '"status": "completed"' in (run / "summary.json").read_text()


@pytest.fixture
def three_nodes():
    """A head (inputs, output), a node for the hidden layer and a spare, on 127.0.0.1."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    hidden = nodes.add_node(num_cpus=1, resources={"second": 1})
    spare = nodes.add_node(num_cpus=1, resources={"spare": 1})
    yield nodes, hidden, spare
    # the lost node's folder is that host's disk, left by design: a test that failed before
    # looking at it must not leave it to the next one
    shutil.rmtree(Path(tempfile.gettempdir()) / "exmachina-ray" / hidden.node_id[:16], ignore_errors=True)
    session = nodes.head_node.get_session_dir_path()
    nodes.shutdown()
    wait_for(lambda: not [p for p in me.children(recursive=True) if p.pid not in before], timeout=30)
    remove_sessions({session})


def test_a_lost_node_s_neurons_come_back_on_the_spare_node(tmp_path, three_nodes):
    nodes, hidden, spare = three_nodes
    config = ray_config(nodes, training={"learning_rate": 0.5, "epochs": 400})
    config["placement"]["fallback"] = ["spare"]
    config["runtime"]["checkpoint_every"] = 20
    proc = start_learn(write_config(tmp_path, config))
    try:
        await_home_checkpoint(tmp_path, proc)
        nodes.remove_node(hidden, allow_graceful=False)
    finally:
        err = finish(proc, timeout=360)
    assert proc.returncode == 0, err
    run = run_dir(tmp_path)
    supervisor_log = (run / "neurons" / "supervisor.log").read_text()
    assert re.search(r"node \w+ \([\d.]+\) lost with agent-\w+ \(3 neurons\)", supervisor_log)
    moved = re.search(
        r"moving hidden1\.0, hidden1\.1, hidden1\.2 to node (\w+) .*: restored from their checkpoints at "
        r"update [\d-]+; the network is at update \d+: \d+ updates lost",
        supervisor_log,
    )
    assert moved, supervisor_log
    assert spare.node_id.startswith(moved[1])
    placed = dict(re.findall(r"neuron (\S+) ran on node (\w+)", supervisor_log))
    assert {placed[f"hidden1.{i}"] for i in range(3)} == {spare.node_id}, placed
    coordinator_log = (run / "neurons" / "coordinator.log").read_text()
    assert re.search(
        r"hidden1\.0 restarted \(pid \d+\) from update \d+: \d+ updates lost, endpoints moved",
        coordinator_log,
    )
    assert '"status": "completed"' in (run / "summary.json").read_text()
    only_lost_node_left(hidden)


def only_lost_node_left(lost) -> None:
    """The surviving nodes keep nothing of the run; the lost node's folder is that host's disk (all
    nodes share this machine's here), which the test removes."""
    root = Path(tempfile.gettempdir()) / "exmachina-ray"
    left = [p.name for p in root.iterdir()] if root.exists() else []
    assert set(left) <= {lost.node_id[:16]}, left
    shutil.rmtree(root, ignore_errors=True)


def test_a_label_no_node_declares_is_one_line_and_exit_2(tmp_path, cluster):
    config = ray_config(cluster)
    config["placement"]["layers"]["hidden1"] = "gpu"
    path = write_config(tmp_path, config)
    result = run_learn(path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"exmachina: {path}: placement: no node of the cluster at {cluster.address} declares the label "
        """'gpu' (ray start --resources='{"gpu": 1}')"""
    )
    assert not (tmp_path / "runs").exists()


def test_an_address_where_no_cluster_listens_is_one_line_and_exit_2(tmp_path):
    config = xor_config(
        runtime={"transport": "tcp"}, placement={"engine": "ray", "address": "127.0.0.1:1", "nodes": ["a"]}
    )
    result = run_learn(write_config(tmp_path, config), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "exmachina: placement.address '127.0.0.1:1': no Ray cluster there ([Errno 111] Connection refused)"
    )
    assert not (tmp_path / "runs").exists()


# -- two hosts, as near as one machine gets: two network namespaces joined by a veth pair ----------

NETNS = {"exm_a": "10.213.0.1", "exm_b": "10.213.0.2"}


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def in_netns(ns: str, *command: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *command], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def netns_pids(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns).stdout.split()]


@pytest.fixture
def two_hosts():
    """Namespaces exm_a and exm_b, 10.213.0.1 and .2 on the two ends of a veth pair; afterwards every
    process in them is killed by pid and the namespaces (and so the veth) are deleted."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make network namespaces")
    made = []
    try:
        for ns in NETNS:
            if ip("netns", "add", ns).returncode != 0:
                pytest.skip(f"cannot create network namespace {ns} (no CAP_SYS_ADMIN here?)")
            made.append(ns)
        if ip("link", "add", "exm_va", "type", "veth", "peer", "name", "exm_vb").returncode != 0:
            pytest.skip("cannot create a veth pair (no CAP_NET_ADMIN here?)")
        for (ns, address), dev in zip(NETNS.items(), ("exm_va", "exm_vb")):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield NETNS
    finally:
        sessions = ray_sessions([pid for ns in made for pid in netns_pids(ns)])
        for ns in made:
            for pid in netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in made:
            wait_for(lambda ns=ns: not netns_pids(ns), timeout=30)
            ip("netns", "del", ns)
        remove_sessions(sessions)


def test_neurons_in_two_network_namespaces_over_tcp_with_curve(tmp_path, two_hosts):
    head, second = two_hosts["exm_a"], two_hosts["exm_b"]
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]
    started = in_netns(
        "exm_a", ray_cli, "start", "--head", f"--node-ip-address={head}", "--port=6379",
        '--resources={"host_a": 1}', *common,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    joined = in_netns(
        "exm_b", ray_cli, "start", f"--address={head}:6379", f"--node-ip-address={second}",
        '--resources={"host_b": 1}', "--num-cpus=1", "--disable-usage-stats",
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr[-2000:]
    placement = {
        "engine": "ray",
        "address": f"{head}:6379",
        "rule": "by_layer",
        "layers": {"input": "host_a", "hidden1": "host_b", "output": "host_a"},
    }
    config = xor_config(runtime={"transport": "tcp", "curve": "on"}, placement=placement)
    path = write_config(tmp_path, config)
    result = in_netns(
        "exm_a", sys.executable, "-m", "exmachina.supervisor", "--config", str(path), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dir(tmp_path)
    at = dict(
        re.findall(
            r"neuron (\S+) ran on node \w+ \(([\d.]+)\)", (run / "neurons" / "supervisor.log").read_text()
        )
    )
    assert {at[f"hidden1.{i}"] for i in range(3)} == {second}, at
    assert {at[n] for n in ("input.0", "input.1", "output.0")} == {head}, at
    # the hidden neurons' inboxes were CURVE servers on the other namespace's address
    hidden_log = (run / "neurons" / "hidden1.0.log").read_text()
    assert f"inbox=tcp://{second}:" in hidden_log and "curve: inbox is a CURVE server" in hidden_log


def test_with_no_node_to_take_a_lost_node_s_neurons_the_run_stops_and_resumes_on_what_is_left(
    tmp_path, three_nodes
):
    nodes, hidden, spare = three_nodes
    config = ray_config(nodes, training={"learning_rate": 0.5, "epochs": 300})
    config["placement"]["fallback"] = ["gpu"]  # no node declares it
    config["runtime"]["checkpoint_every"] = 20
    proc = start_learn(write_config(tmp_path, config))
    try:
        await_home_checkpoint(tmp_path, proc)
        nodes.remove_node(hidden, allow_graceful=False)
    finally:
        err = finish(proc, timeout=360)
    assert proc.returncode == 1, err
    run = run_dir(tmp_path)
    assert re.search(
        r"exmachina: node \w+ \([\d.]+\) was lost and no surviving node can take its neurons \(gpu\): run "
        rf"stopped; resume with: exmachina learn --resume {re.escape(str(run))}",
        err,
    ), err
    # the cluster has no node labelled `second` now: the resumed run places the hidden layer elsewhere
    resumed = subprocess.run(
        [sys.executable, "-m", "exmachina", "learn", "--resume", str(run)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"status": "completed"' in (run / "summary.json").read_text()
    supervisor_log = (run / "neurons" / "supervisor.log").read_text()
    assert re.search(r"no node declares 'second': hidden1\.0 goes to node \w+", supervisor_log)
    placed = dict(re.findall(r"neuron (\S+) ran on node (\w+)", supervisor_log))
    survivors = {nodes.head_node.node_id, spare.node_id}  # dealt to the least loaded of them
    assert {placed[f"hidden1.{i}"] for i in range(3)} <= survivors, placed
    only_lost_node_left(hidden)
