"""A workflow submitted as a Ray Job to a real two-node Ray cluster, as on a GPU cluster.

Two `ray start` processes (a head and a node that joins it, one CPU each, token auth on), a
real `mlflow server` for lineage, and an S3 object store (moto's S3 server) holding the
artifacts and Ray Train checkpoints: a step reads what workers on the other node wrote only
through the store. Both training workers of a step cannot fit on one node, so they span both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psutil
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import ROOT, _port_open, free_port, lifecycle

BUCKET = "lifecycle"
# smoke.yaml, shorter: the point is where things run and land, not how well the model learns.
OVERRIDES = ["pretrain.max_steps=40", "pretrain.eval_every=20", "pretrain.checkpoint_every=20", "finetune.max_steps=30",
             "finetune.eval_every=15", "finetune.checkpoint_every=15", "evaluate.test_examples=20", "evaluate.benchmark_limit=4",
             "evaluate.ray_data_min_items=0"]  # scored through a Ray Data actor pool, as a large set would be


@pytest.fixture
def object_store():
    """Environment of an S3 server on this machine, with an empty bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server._port}", "AWS_ACCESS_KEY_ID": "lifecycle",
           "AWS_SECRET_ACCESS_KEY": "lifecycle", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="lifecycle",
                 aws_secret_access_key="lifecycle").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture
def two_nodes(object_store, ray_address):
    """Dashboard URL of a fresh head + one joined node, each with its own CPU and the store's credentials."""
    port, dashboard = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # unix socket paths must stay short
    # As on a cluster node: the image's python first on PATH, credentials in the node's environment.
    env = {**os.environ, **object_store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    for key in [k for k in env if k.startswith("RAY_SERVE_")]:  # Serve's default proxy, as the shipped cluster files
        del env[key]  # have it; the session's HAProxy settings (its folder and ports) are the session Ray's own
    ray = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]

    def own_ports():  # the session's Ray on this machine holds the default agent and client ports
        return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]

    head = subprocess.Popen([ray, "start", "--head", "--port", str(port), "--include-dashboard=true", "--dashboard-port",
                             str(dashboard), "--ray-client-server-port", str(free_port()), "--temp-dir", temp, *own_ports(), *common],
                            env=env, stdout=open(f"{temp}/head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [head]
    try:
        _wait(lambda: _port_open(port) and _port_open(dashboard), 120, "the head")
        nodes.append(subprocess.Popen([ray, "start", "--address", f"127.0.0.1:{port}", *own_ports(), *common], env=env,
                                      stdout=open(f"{temp}/node.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        url = f"http://127.0.0.1:{dashboard}"
        _wait(lambda: len(_alive_nodes(url)) == 2, 120, "the second node to join")
        yield url
    finally:
        # A throwaway cluster: no 30 s drain. gcs_server, raylet and the agents start their own
        # sessions, so collect them before the kill.
        for proc in reversed(nodes):
            family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            for child in family:
                if child.is_running():
                    child.kill()


def test_a_run_on_two_nodes_without_a_tracking_server_and_object_store_is_refused_before_any_step(two_nodes, object_store):
    env = {k: v for k, v in {**os.environ, **object_store}.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LIFECYCLE_STORAGE")}
    started = time.time()
    out = lifecycle("submit", "workflows/smoke.yaml", "--address", two_nodes, "--follow", cwd=ROOT, env=env, timeout=300)
    print(f"\nrefused in {time.time() - started:.0f}s, submission included")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "this Ray cluster has 2 nodes" in out.stdout and "not to an object store (--storage)" in out.stdout, out.stdout[-3000:]
    assert "not to a tracking server (MLFLOW_TRACKING_URI)" in out.stdout
    job_id = out.stdout.splitlines()[0].strip()
    jobs = json.loads(lifecycle("jobs", "--address", two_nodes, "--json", env=env).stdout)
    assert [(j["job_id"], j["status"]) for j in jobs] == [(job_id, "FAILED")]
    # No step ran: no step task, ever (the State API answers: it lists both nodes).
    assert len(_alive_nodes(two_nodes)) == 2 and _state(two_nodes, "tasks", [("name", "=", "step:corpus")]) == []


@pytest.mark.full  # `./scripts/test.sh --full`: about 5 minutes on 2 cores
def test_submitted_workflow_spans_both_nodes_and_logs_lineage_to_the_server(two_nodes, mlflow_server, object_store):
    storage = f"s3://{BUCKET}/runs"
    env = {**os.environ, **object_store, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    out = lifecycle("submit", "workflows/smoke.yaml", *OVERRIDES, f"deploy.port={free_port()}", "--address", two_nodes,
                    "--storage", storage, "--follow", cwd=ROOT, env=env, timeout=1200)
    wall = time.time() - started
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    job_id = out.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_") and f"job {job_id}: SUCCEEDED" in out.stdout

    jobs = json.loads(lifecycle("jobs", "--address", two_nodes, "--json", env=env).stdout)
    assert [(j["job_id"], j["status"], j["workflow"]) for j in jobs] == [(job_id, "SUCCEEDED", "smoke")]

    # The Ray Train workers of the training steps ran on both nodes.
    workers = _train_workers(two_nodes)
    assert len({w["node_id"] for w in workers}) == 2, workers
    print(f"\nsubmission wall time {wall:.0f}s; training workers per node: "
          f"{ {n: sum(w['node_id'] == n for w in workers) for n in {w['node_id'] for w in workers}} }")

    # Lineage landed in the tracking server, from the endpoint's model back to the datasets.
    runs = json.loads(lifecycle("status", "--json", env=env).stdout)
    assert (runs[0]["workflow"], runs[0]["status"]) == ("smoke", "FINISHED"), runs[0]
    assert [s["step"] for s in runs[0]["steps"]][-1] == "deploy"
    chain = json.loads(lifecycle("lineage", "models:/smoke-finetune/1", "--json", env=env).stdout)
    assert [n["step"] for n in chain][:2] == ["finetune", "pretrain"] and "corpus" in [n["step"] for n in chain]

    # Artifacts and checkpoints are in the object store, and the registry points there.
    s3 = boto3.client("s3", endpoint_url=object_store["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="lifecycle", aws_secret_access_key="lifecycle")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page.get("Contents", [])]
    for step in ("pretrain", "finetune", "evaluate"):
        assert any(k.startswith(f"runs/artifacts/{step}-") and k.endswith("/.lifecycle-complete") for k in keys), step
    assert any(k.startswith("runs/ray_storage/pretrain-") and "/checkpoint_" in k for k in keys)
    import mlflow

    source = mlflow.MlflowClient(mlflow_server).get_model_version("smoke-finetune", "1").source
    assert source.startswith(f"{storage}/artifacts/finetune-")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _state(dashboard: str, kind: str, filters: list) -> list[dict]:
    """Ray's State API on the two-node cluster, from a clean process (this one is connected to the session's Ray)."""
    code = ("import json, sys; from ray.util import state; "
            f"print(json.dumps([x.__dict__ if hasattr(x, '__dict__') else dict(x) for x in state.list_{kind}("
            f"address={dashboard!r}, filters={filters!r}, limit=1000, detail=True)], default=str))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout) if out.returncode == 0 else []


def _alive_nodes(dashboard: str) -> list[dict]:
    return _state(dashboard, "nodes", [("state", "=", "ALIVE")])


def _train_workers(dashboard: str) -> list[dict]:
    return _state(dashboard, "actors", [("class_name", "=", "RayTrainWorker")])
