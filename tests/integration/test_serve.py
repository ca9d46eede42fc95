"""The OpenAI-compatible endpoint on a real Ray Serve, queried over HTTP with the official `openai` client."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import peft
import pytest
import torch

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.deploy.config import DeployConfig
from components.deploy.generation import Params, generate
from tests.conftest import delete_serve_app, wait_for

KEY = "test-key-0123456789"
APP = "test-serve"


@pytest.fixture(scope="module")
def endpoint(ray_address, serve_port, tmp_path_factory):
    """A served tiny model plus a LoRA adapter over the same base; yields (url, served id, local models, tokenizer)."""
    from components.deploy.step import start

    root = tmp_path_factory.mktemp("served")
    tok = train_bpe([e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3, TokenizerConfig(vocab_size=400))
    base = build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), len(tok),
                           tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0).eval()
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    tuned = peft.get_peft_model(build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), len(tok),
                                                tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"]))
    with torch.no_grad():  # a non-zero update, so the adapter changes the answers
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned.save_pretrained(root / "adapter")
    os.environ["LIFECYCLE_API_KEY"] = KEY  # replicas get it through their runtime_env
    try:
        cfg = DeployConfig(port=serve_port, app_name=APP, max_tokens=8, max_ongoing_requests=4, max_queued_requests=4)
        url = start(cfg, {"id": "tiny", "path": str(root / "base"), "metadata": {"registered_model": "tiny", "version": "3"}},
                    # A "." in the id, as in a sweep trial's: PEFT module names cannot hold one.
                    {"tiny-r4-lr0.01": {"path": str(root / "adapter"), "base_path": str(root / "base"), "metadata": {}}})
    finally:
        del os.environ["LIFECYCLE_API_KEY"]
    yield url, base, tuned.eval(), tok
    delete_serve_app(APP)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def greedy(model, tok, prompt, max_tokens=8):
    return generate(model, tok, [prompt], Params(max_tokens=max_tokens, temperature=0))[0].text


def test_completions_chat_streaming_and_adapters_with_the_openai_client(endpoint):
    url, base, tuned, tok = endpoint
    c = client(url)
    models = {m.id: m for m in c.models.list().data}
    assert set(models) == {"tiny", "tiny-r4-lr0.01"} and models["tiny"].model_extra["metadata"]["version"] == "3"

    prompt = "### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    out = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert out.choices[0].text == greedy(base, tok, prompt)  # the served model is the model
    assert out.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens > out.usage.prompt_tokens

    streamed = "".join(chunk.choices[0].text for chunk in c.completions.create(model="tiny", prompt=prompt, max_tokens=8,
                                                                               temperature=0, stream=True))
    assert streamed == out.choices[0].text

    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Add 2 and 3."}], max_tokens=8, temperature=0)
    templated = tok.apply_chat_template([{"role": "user", "content": "Add 2 and 3."}], tokenize=False, add_generation_prompt=True)
    assert chat.choices[0].message.content == greedy(base, tok, templated) and chat.choices[0].finish_reason in ("stop", "length")
    pieces = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Add 2 and 3."}], max_tokens=8,
                                       temperature=0, stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == chat.choices[0].message.content

    sampled = dict(model="tiny", prompt=prompt, max_tokens=8, temperature=1.0, n=2, seed=11)
    first, again = c.completions.create(**sampled), c.completions.create(**sampled)
    assert len(first.choices) == 2 and [x.text for x in first.choices] == [x.text for x in again.choices]

    adapted = c.completions.create(model="tiny-r4-lr0.01", prompt=prompt, max_tokens=8, temperature=0)
    assert adapted.choices[0].text == greedy(tuned, tok, prompt)  # base + LoRA, multiplexed
    assert c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0).choices[0].text == out.choices[0].text


def test_bad_requests_get_4xx_with_openai_errors(endpoint):
    url, *_ = endpoint
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert httpx.get(f"{url}/models").status_code == 401
    with pytest.raises(openai.NotFoundError):
        client(url).completions.create(model="../../etc/passwd", prompt="hi", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="context"):
        client(url).completions.create(model="tiny", prompt="word " * 400, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client(url).completions.create(model="tiny", prompt="hi", max_tokens=4000)
    bad = httpx.post(f"{url}/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": "many"},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "max_tokens"
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_serve_and_endpoint_metrics_are_exported_for_prometheus(endpoint):
    import ray

    url, *_ = endpoint
    client(url).completions.create(model="tiny", prompt="hi", max_tokens=4)
    port = ray.nodes()[0]["MetricsExportPort"]
    names = ("lifecycle_generated_tokens", "lifecycle_batch_size", "serve_num_http_requests")

    def exported():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return all(name in text for name in names)

    wait_for(exported, 60, f"{names} on Ray's metrics endpoint")


def test_overload_is_refused_with_429_or_503_and_the_server_survives(endpoint):
    url, *_ = endpoint
    headers = {"Authorization": f"Bearer {KEY}"}

    def ask(i):
        r = httpx.post(f"{url}/completions", json={"model": "tiny", "prompt": f"Count the words: {i}", "max_tokens": 32},
                       headers=headers, timeout=120)
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(ask, range(96)))
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(200) > 0 and codes.count(429) + codes.count(503) > 0, codes
    assert all(retry == "1" for code, retry in results if code == 429)
    assert httpx.post(f"{url}/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, headers=headers).status_code == 200


def test_haproxy_answers_on_the_serve_port_as_under_lifecycle_run(endpoint, serve_port):
    """The ingress `lifecycle run` starts on its embedded Ray, and the one docs/benchmarks.md measures:
    HAProxy (from ray[serve]) in front of the replica's own HTTP server, not Serve's Python proxy actor."""
    import psutil

    listeners = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == serve_port}
    assert listeners and {psutil.Process(pid).name() for pid in listeners} == {"haproxy"}, listeners
    # Its config is in this Ray's own folder (components/deploy/ingress.py), not the machine-wide /tmp/haproxy-serve.
    own = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    configs = list(own.glob("**/haproxy.cfg"))  # Ray writes it in a folder per node
    assert own.name.startswith("lh-") and configs and f":{serve_port}" in configs[0].read_text()
