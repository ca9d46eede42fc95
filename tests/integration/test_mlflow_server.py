"""Lineage through a real `mlflow server` process (as on a cluster), not only a SQLite file."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, lifecycle

SPEC = """\
# lifecycle run spec.yaml
name: served
steps:
  corpus: {uses: data, with: {max_documents: 60}}
  tokenizer: {uses: tokenizer, needs: [corpus], with: {vocab_size: 300}}
"""


@pytest.fixture
def mlflow_server(tmp_path):
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


def test_workflow_logs_lineage_to_a_tracking_server(ray_address, mlflow_server, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    out = lifecycle("run", str(spec), "--workdir", str(tmp_path / "wd"), "--address", ray_address, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "wd" / "mlflow.db").exists()  # everything went to the server

    runs = json.loads(lifecycle("status", "--json", env=env).stdout)
    tokenizer_run = runs[0]["steps"][1]["run_id"]
    chain = json.loads(lifecycle("lineage", tokenizer_run, "--json", env=env).stdout)
    assert [n["step"] for n in chain] == ["tokenizer", "corpus"]
    assert {d["name"] for d in chain[1]["datasets"]} == {"corpus/train", "corpus/validation"}
