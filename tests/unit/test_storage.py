"""Storage roots: local folders and an S3 object store (moto's S3 server on this machine), and
what `lifecycle submit` sends to the Jobs API."""

from __future__ import annotations

import argparse
import shlex

import boto3
import pytest
from moto.server import ThreadedMotoServer

from components import storage
from tests.conftest import ROOT, free_port
from workflows.spec import SpecError
from workflows.submit import add_parsers, job_request


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server._port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("LIFECYCLE_CACHE", str(tmp_path_factory.mktemp("cache")))
        boto3.client("s3").create_bucket(Bucket="bkt")
        yield "s3://bkt/root"
    server.stop()


def _tree(tmp_path):
    src = tmp_path / "model"
    (src / "adapter").mkdir(parents=True)
    (src / "config.json").write_text('{"n": 1}')
    (src / "adapter" / "adapter_config.json").write_text("{}")
    return src


def test_an_object_store_round_trip_downloads_once_per_node(s3, tmp_path):
    uri = storage.join(s3, "artifacts", "finetune-abc")
    assert storage.is_remote(uri) and uri == "s3://bkt/root/artifacts/finetune-abc"
    assert not storage.exists(uri)
    storage.upload(_tree(tmp_path), uri)
    assert storage.exists(uri) and storage.listdir(storage.join(s3, "artifacts")) == ["finetune-abc"]
    local = storage.localize(uri)
    assert (local / "config.json").read_text() == '{"n": 1}' and (local / "adapter" / "adapter_config.json").exists()
    assert storage.localize(uri) == local  # cached: the same copy
    storage.remove(uri)
    assert not storage.exists(uri) and storage.listdir(storage.join(s3, "artifacts")) == []


def test_a_partial_upload_is_never_read(s3, tmp_path):
    uri = storage.join(s3, "artifacts", "cut-short")
    with pytest.raises(RuntimeError):
        with storage.writing(uri) as directory:  # the step crashed mid-way: nothing is uploaded
            (directory / "config.json").write_text("{}")
            raise RuntimeError("crash")
    assert not storage.exists(uri)
    boto3.client("s3").put_object(Bucket="bkt", Key="root/artifacts/cut-short/config.json", Body=b"{}")  # no marker
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError, match="no complete artifact"):
        storage.localize(uri)


def test_local_roots_are_plain_paths(tmp_path):
    root = str(tmp_path / "store")
    uri = storage.join(root, "artifacts", "x")
    assert not storage.is_remote(uri) and not storage.is_remote(f"file://{uri}")
    with storage.writing(uri) as directory:
        (directory / "a.txt").write_text("a")
    assert storage.localize(uri) == tmp_path / "store" / "artifacts" / "x" and storage.exists(uri)
    assert storage.localize(f"file://{uri}") == storage.localize(uri)
    assert storage.as_uri(uri).startswith("file:///") and storage.as_uri("s3://bkt/k") == "s3://bkt/k"
    storage.download(uri, tmp_path / "copy")
    assert (tmp_path / "copy" / "a.txt").read_text() == "a"


def _submit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["submit", *argv])


def test_submit_sends_the_validated_spec_with_its_runtime_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-forwarded")
    args = _submit_args(str(ROOT / "workflows" / "smoke.yaml"), "pretrain.max_steps=50", "--working-dir", str(ROOT),
                        "--storage", "s3://bucket/runs", "--env", "HF_HOME=/cache", "--pip", "lm-eval==0.4.9", "--address", "http://h:8265")
    request = job_request(args)
    assert shlex.split(request["entrypoint"]) == ["python", "-m", "workflows.cli", "run", "workflows/smoke.yaml",
                                                  "pretrain.max_steps=50", "--no-wait", "--storage", "s3://bucket/runs"]
    env = request["runtime_env"]["env_vars"]
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "HF_HOME": "/cache"}  # credentials stay here
    assert request["runtime_env"]["working_dir"] == str(ROOT) and request["runtime_env"]["pip"] == ["lm-eval==0.4.9"]
    assert ".venv" in request["runtime_env"]["excludes"] and request["metadata"]["workflow"] == "smoke"


@pytest.mark.parametrize("argv, message", [
    (["workflows/smoke.yaml", "pretrain.bogus=1"], "field 'bogus'"),
    (["workflows/smoke.yaml", "--env", "NOEQUALS"], "expected KEY=VALUE"),
    (["/etc/hostname"], "not inside the working directory"),
])
def test_submit_refuses_bad_input_before_anything_is_sent(argv, message, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    if argv[0].startswith("/etc"):
        outside = tmp_path / "spec.yaml"
        outside.write_text((ROOT / "workflows" / "smoke.yaml").read_text())
        argv = [str(outside)]
    with pytest.raises(SpecError, match=message):
        job_request(_submit_args(*argv))
