"""Shared fixtures: one local Ray cluster for the whole session, with token auth on.

The cluster is a real `ray start --head` process (2 CPUs), so tests can drive it
in-process (engine.run) and from `lifecycle` subprocesses with --address alike.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Token auth for the test cluster and every client; set before anything imports ray,
# which reads the mode once.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
# Nothing downloads in tests: the hub client reads local caches only (an hf: base is tested through
# a cache the test writes), and fails at once instead of retrying a network it cannot reach.
os.environ["HF_HUB_OFFLINE"] = "1"
# Serve's ingress as on a user's embedded Ray: HAProxy in front of the replicas, with its own files and ports.
from components.deploy.ingress import free_port, local_ingress_env  # noqa: E402  (imports no ray)

os.environ.update(local_ingress_env(dict(os.environ)))


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """Address of a session-wide local Ray head (token auth on); the test process is connected."""
    import ray

    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        # The dashboard serves the State API, which Ray Train's placement-group cleaner needs
        # to free a killed trainer's CPUs (a stopped sweep trial, a killed driver).
        [str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard=true", "--dashboard-port", str(free_port()), "--disable-usage-stats",
         "--node-ip-address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 120
    while not _port_open(port):  # GCS up; ray.init before that leaves half-made state
        if time.time() > deadline or head.poll() is not None:
            os.killpg(head.pid, signal.SIGKILL)
            raise RuntimeError(f"ray start --head did not come up on port {port}")
        time.sleep(1)
    time.sleep(3)
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    os.environ["RAY_ADDRESS"] = address
    yield address
    ray.shutdown()
    # gcs_server, raylet and the agents start their own sessions: collect them first.
    # The session is over: no 30 s drain.
    family = psutil.Process(head.pid).children(recursive=True)
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    for proc in family:
        if proc.is_running():
            proc.kill()
    # `ray start` recorded this head as the machine's current cluster; a killed head leaves the
    # record behind, and Ray's State API clients in a later local Ray (Ray Train's placement-group
    # cleaner among them) would wait on the dead address (12 s per training run).
    from ray._common.utils import get_ray_address_file, reset_ray_address

    recorded = Path(get_ray_address_file(None))
    if recorded.exists() and recorded.read_text().strip() == address:
        reset_ray_address()


@pytest.fixture(scope="session")
def serve_port(ray_address) -> int:
    """The HTTP port of Serve on the test cluster: Serve keeps the port it first started with."""
    return free_port()


def delete_serve_app(name: str) -> None:
    """Remove a Serve application from the test cluster, freeing its replicas' CPUs."""
    from ray import serve

    serve.delete(name)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def mlflow_server(tmp_path):
    """URL of a real `mlflow server` process (SQLite backend, proxied artifact store), as on a cluster."""
    import requests

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
        time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)


def lifecycle(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the `lifecycle` console script of this environment."""
    exe = shutil.which("lifecycle", path=str(Path(sys.executable).parent)) or "lifecycle"
    return subprocess.run([exe, *args], capture_output=True, text=True, **kwargs)


def smoke_subset(tmp_path: Path, steps=("corpus", "tokenizer", "pretrain")) -> Path:
    """workflows/smoke.yaml cut down to `steps` (for tests about the engine, not the later phases)."""
    import yaml

    spec = yaml.safe_load((ROOT / "workflows" / "smoke.yaml").read_text())
    spec["steps"] = {k: v for k, v in spec["steps"].items() if k in steps}
    path = tmp_path / "smoke-subset.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def lifecycle_popen(*args: str, log: Path) -> subprocess.Popen:
    """Start `lifecycle` in the background, its output going to `log`.

    A file, not a pipe: a pipe nobody drains fills up and stalls the command.
    """
    exe = shutil.which("lifecycle", path=str(Path(sys.executable).parent)) or "lifecycle"
    with open(log, "w") as out:
        return subprocess.Popen([exe, *args], stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    """Poll `predicate` every 2 s until it returns something truthy; on timeout show the log's tail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    tail = "\n".join(log.read_text().splitlines()[-40:]) if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def wait_for_idle_cluster(timeout: float = 180) -> None:
    """Block until every CPU of the test cluster is free again (the last test's workers are gone)."""
    import ray

    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.time() > deadline:
            raise AssertionError(f"cluster still busy after {timeout:.0f}s: {ray.available_resources()}")
        time.sleep(1)


def execute_notebook(name: str, **parameters):
    """Run notebooks/<name> top to bottom in a real Jupyter kernel, `parameters` set after its
    parameters cell (as papermill does); returns (notebook with outputs, seconds). A failing cell raises."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for cell in nb.cells:  # stored without outputs, so a reader sees the code, not a stale run
        assert cell.cell_type != "code" or not cell.outputs and cell.execution_count is None, f"{name} has stored outputs"
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    started = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb, time.time() - started


def notebook_text(nb) -> str:
    """Everything the notebook's cells printed or displayed, as text."""
    import json

    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))


def notebook_images(nb) -> int:
    """How many plots the notebook's cells displayed."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
