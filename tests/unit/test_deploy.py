"""The server's parts without Ray: generation (batching, stop strings, seeds, usage, streaming) and request bodies."""

import pytest
from pydantic import ValidationError

from components.deploy import api
from components.deploy.config import DeployConfig
from components.deploy.generation import Params, cut_at_stop, generate, stream
from tests.unit.conftest import PROMPTS


def test_batched_greedy_equals_one_by_one_and_counts_tokens(model, tok):
    params = Params(max_tokens=12, temperature=0)
    batch = generate(model, tok, PROMPTS, params)
    alone = [generate(model, tok, [p], params)[0] for p in PROMPTS]
    assert [c.text for c in batch] == [c.text for c in alone]  # left padding does not change the answer
    for prompt, c in zip(PROMPTS, batch):
        assert c.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 12
        assert c.finish_reason == "stop" or c.completion_tokens == 12


def test_seed_reproduces_sampling_and_stop_strings_cut(model, tok):
    sampled = Params(max_tokens=16, temperature=1.0, seed=7)
    first, again = generate(model, tok, PROMPTS[:1], sampled)[0], generate(model, tok, PROMPTS[:1], sampled)[0]
    other = generate(model, tok, PROMPTS[:1], Params(max_tokens=16, temperature=1.0, seed=8))[0]
    assert first.text == again.text and first.text != other.text
    full = generate(model, tok, PROMPTS[:1], Params(max_tokens=16, temperature=0))[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    cut = generate(model, tok, PROMPTS[:1], Params(max_tokens=16, temperature=0, stop=(stop,)))[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert cut_at_stop("a b. c", (".", " c")) == ("a b", True) and cut_at_stop("abc", ("x",)) == ("abc", False)


def test_stream_gives_the_greedy_text_piece_by_piece(model, tok):
    params = Params(max_tokens=12, temperature=0)
    pieces = list(stream(model, tok, PROMPTS[0], params))
    assert pieces[-1][0] == "" and pieces[-1][1] in ("stop", "length")
    assert "".join(text for text, _ in pieces) == generate(model, tok, PROMPTS[:1], params)[0].text
    full = "".join(t for t, _ in pieces)
    if len(full) > 3:  # a stop string ends the stream early, without the stop string
        stopped = list(stream(model, tok, PROMPTS[0], Params(max_tokens=12, temperature=0, stop=(full[2:4],))))
        assert "".join(t for t, _ in stopped) == full[: full.find(full[2:4])] and stopped[-1][1] == "stop"


def test_request_bodies_are_validated():
    ok = api.CompletionRequest(model="m", prompt="hi", stop="\n", user="ignored", logprobs=None)
    assert ok.prompt == ["hi"] and ok.stop == ["\n"] and ok.temperature == 1.0
    for bad in ({"model": "m", "prompt": "x", "max_tokens": "many"}, {"model": "m", "prompt": "x", "temperature": 3},
                {"model": "m", "prompt": []}, {"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
                {"prompt": "x"}, {"model": "m", "prompt": "x", "n": 0}):
        with pytest.raises(ValidationError):
            api.CompletionRequest.model_validate(bad)
    with pytest.raises(ValidationError):
        api.ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "robot", "content": "x"}]})
    body = api.error_body("nope", param="model", code="model_not_found")
    assert body == {"error": {"message": "nope", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


def test_deploy_config_checks():
    with pytest.raises(ValidationError, match="max_tokens_limit"):
        DeployConfig(max_tokens=512)
    with pytest.raises(ValidationError, match="min_replicas"):
        DeployConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})


def test_deploy_config_rag_route_calls_this_endpoints_model():
    cfg = DeployConfig(app_name="chat", rag={})
    assert cfg.rag.model_app == "chat" and cfg.rag.route_prefix == "/v1/rag"
    assert DeployConfig().rag is None
    with pytest.raises(ValidationError, match="rag.model_app"):
        DeployConfig(app_name="chat", rag={"model_app": "other"})
    with pytest.raises(ValidationError, match="rag.app_name must differ"):
        DeployConfig(rag={"app_name": "lifecycle"})


def test_a_batch_waits_to_fill_only_under_concurrent_load():
    from components.deploy.generation import batch_wait_s

    assert batch_wait_s(last_batch_size=0, since_last_s=1e9, wait_s=0.02) == 0.0  # a fresh server
    assert batch_wait_s(1, 0.005, 0.02) == 0.0  # one client at a time: no added latency
    assert batch_wait_s(12, 0.005, 0.02) == 0.02  # concurrent clients coming back for more
    assert batch_wait_s(12, 5.0, 0.02) == 0.0  # the load has passed


def test_each_embedded_ray_gets_an_haproxy_ingress_of_its_own():
    from components.deploy.ingress import local_ingress_env

    first, second = local_ingress_env({}), local_ingress_env({})
    assert first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # Two local Rays on one machine must not share HAProxy's files or ports (Ray's defaults are machine-wide).
    for key in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        assert first[key] != second[key] and "/tmp/haproxy-serve" not in first[key], key
    # HAProxy takes socket paths of 97 bytes at most, and Ray puts a 56-character node folder in the middle.
    assert len(first["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) + 57 <= 97
    # A choice already made in the environment stands (RAY_SERVE_ENABLE_HA_PROXY=0: Serve's Python proxy).
    assert local_ingress_env({"RAY_SERVE_ENABLE_HA_PROXY": "0"}) == {}


# --- hostile clients: bounds, isolation in a batch, the key and the body size before parsing --------------


def test_every_number_string_and_list_of_a_request_is_bounded():
    base = {"model": "m", "prompt": "x"}
    for bad in ({"seed": 2**70}, {"seed": -(2**64)}, {"temperature": float("nan")}, {"top_p": float("inf")},
                {"stop": ["x" * 257]}, {"stop": 3}, {"prompt": ["a"] * 17}, {"prompt": "x" * (api.MAX_TEXT_CHARS + 1)},
                {"logprobs": 99}, {"presence_penalty": 5}, {"n": 9}, {"max_tokens": 10**9}, {"model": "m" * 300}):
        with pytest.raises(ValidationError):
            api.CompletionRequest.model_validate({**base, **bad})
    assert api.CompletionRequest.model_validate({**base, "seed": 2**63 - 1}).seed == 2**63 - 1  # what torch takes
    message = {"role": "user", "content": "x"}
    with pytest.raises(ValidationError, match="between 1 and 1024 messages"):
        api.ChatCompletionRequest.model_validate({"model": "m", "messages": [message] * 100_000})
    with pytest.raises(ValidationError):
        api.ChatCompletionRequest.model_validate({"model": "m", "messages": [], "top_logprobs": 50})
    with pytest.raises(ValidationError, match="longer than"):
        api.ClassifyRequest.model_validate({"input": ["x" * (api.MAX_TEXT_CHARS + 1)]})


def test_a_request_failing_in_a_batch_fails_alone():
    import asyncio

    from components.deploy.app import ApiError, isolate

    async def run(items):  # one poisoned item makes the whole batched call raise, as torch.manual_seed(2**70) did
        if "poison" in items:
            raise RuntimeError("Overflow when unpacking long")
        return [item.upper() for item in items]

    out = asyncio.run(isolate(run, ["a", "poison", "b"]))
    assert out[0] == "A" and out[2] == "B"
    assert isinstance(out[1], ApiError) and out[1].status == 500 and out[1].body["error"]["type"] == "server_error"

    async def refused(items):
        raise ApiError(404, "no such adapter")

    assert [e.status for e in asyncio.run(isolate(refused, ["a", "b"]))] == [404, 404]


def guarded_app(key, limit):
    """A FastAPI app behind the endpoint's Guard, recording whether a route ever read its body."""
    from fastapi import FastAPI, Request

    from components.deploy.app import Guard

    reached = []
    app = FastAPI()
    app.add_middleware(Guard)
    Guard.settings = {"api_key": key, "max_body_bytes": limit}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        reached.append(len(await request.body()))
        return {"ok": True}

    return app, reached


def test_the_key_and_the_body_size_are_checked_before_the_body_is_read():
    from fastapi.testclient import TestClient

    from components.deploy.app import Guard

    app, reached = guarded_app("k3y", 1024)
    try:
        http = TestClient(app)
        auth = {"Authorization": "Bearer k3y"}
        no_key = http.post("/v1/completions", content=b"{not json" * 10_000)
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key" and not reached
        assert http.post("/v1/completions", content=b"{}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/health").status_code == 200  # the probes need no key
        big = http.post("/v1/completions", content=b"x" * 2048, headers=auth)
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large" and not reached

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(4):
                yield b"x" * 400

        assert http.post("/v1/completions", content=chunks(), headers=auth).status_code == 413 and not reached
        assert http.post("/v1/completions", content=b"x" * 1000, headers=auth).status_code == 200 and reached == [1000]
    finally:
        Guard.settings = {"api_key": None, "max_body_bytes": None}


def test_no_open_endpoint_by_accident(tmp_path, monkeypatch):
    from components.deploy.app import check_exposure, node_api_key

    check_exposure(DeployConfig(host="127.0.0.1"), keyed=False)  # this machine only
    check_exposure(DeployConfig(host="0.0.0.0"), keyed=True)
    check_exposure(DeployConfig(host="0.0.0.0", allow_unauthenticated=True), keyed=False)
    for host in ("0.0.0.0", "10.1.2.3", "my-host"):
        with pytest.raises(ValueError, match="allow_unauthenticated"):
            check_exposure(DeployConfig(host=host), keyed=False)

    monkeypatch.delenv("LIFECYCLE_API_KEY", raising=False)
    assert node_api_key(None) is None
    (tmp_path / "key").write_text("from-file\n")
    assert node_api_key(str(tmp_path / "key")) == "from-file"
    with pytest.raises(RuntimeError, match="not on this node"):  # a key was meant: never serve without it
        node_api_key(str(tmp_path / "missing"))
    monkeypatch.setenv("LIFECYCLE_API_KEY", "from-env")
    assert node_api_key(None) == "from-env" and node_api_key(str(tmp_path / "missing")) == "from-env"


def test_the_api_key_reaches_the_replicas_in_a_private_file_not_the_runtime_env(monkeypatch):
    import os
    import stat
    from pathlib import Path

    from components.deploy.app import build

    monkeypatch.setenv("LIFECYCLE_API_KEY", "s3cret-key")
    deployment = build(DeployConfig(host="0.0.0.0"), {"id": "m", "path": "/nowhere", "metadata": {}}, {})._bound_deployment
    assert "s3cret-key" not in repr(deployment.ray_actor_options) and "runtime_env" not in deployment.ray_actor_options
    assert "s3cret-key" not in repr(deployment.init_args)
    key_file = deployment.init_args[0]["api_key_file"]
    assert Path(key_file).read_text() == "s3cret-key" and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    monkeypatch.delenv("LIFECYCLE_API_KEY")
    with pytest.raises(ValueError, match="without an API key"):
        build(DeployConfig(host="0.0.0.0"), {"id": "m", "path": "/nowhere", "metadata": {}}, {})


def test_a_registered_adapter_is_served_over_its_base_or_named_as_an_adapter(tmp_path):
    import json

    from components.deploy.registry import adapter_base

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    (tmp_path / "ft" / "adapter").mkdir(parents=True)
    (tmp_path / "ft" / "config.json").write_text("{}")
    config = tmp_path / "ft" / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "base")}))
    assert adapter_base("models:/smoke-finetune-adapter/1", tmp_path / "ft" / "adapter") == tmp_path / "base"
    assert adapter_base("models:/smoke-finetune/1", tmp_path / "ft") is None  # a model
    config.write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/gone/pretrain"}))
    with pytest.raises(ValueError, match=r"adapter, not a model.*/gone/pretrain.*serve models:/smoke-finetune/<version> "
                                         r"instead, which serves this adapter as smoke-finetune-adapter"):
        adapter_base("models:/smoke-finetune-adapter/1", tmp_path / "ft" / "adapter")


def test_the_rayservice_requires_the_api_key_secret():
    from pathlib import Path

    import yaml

    service = yaml.safe_load((Path(__file__).parents[2] / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    groups = [service["spec"]["rayClusterConfig"]["headGroupSpec"], *service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "LIFECYCLE_API_KEY"]
            assert ref == {"name": "lifecycle-api-key", "key": "api_key"}, ref  # not optional


def test_the_rag_route_gets_the_key_in_a_private_file_too(monkeypatch):
    from pathlib import Path

    from components.apps import rag
    from components.apps.config import RagConfig

    monkeypatch.setenv("LIFECYCLE_API_KEY", "s3cret-rag")
    deployment = rag.build(RagConfig(), {"id": "m", "path": "/nowhere"})._bound_deployment
    assert "s3cret-rag" not in repr(deployment.ray_actor_options) and "runtime_env" not in deployment.ray_actor_options
    assert Path(deployment.init_args[3]).read_text() == "s3cret-rag"


def test_free_port_lies_below_the_ephemeral_range_and_binds():
    # An outgoing connection can take any port of the ephemeral range before HAProxy binds it.
    import socket

    from components.deploy.ingress import _ephemeral_start, free_port

    for _ in range(20):
        port = free_port()
        assert 20000 <= port < _ephemeral_start()
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
