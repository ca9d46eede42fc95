"""The server's parts without Ray: generation (batching, stop strings, seeds, usage, streaming) and request bodies."""

import pytest
from pydantic import ValidationError

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.deploy import api
from components.deploy.config import DeployConfig
from components.deploy.generation import Params, cut_at_stop, generate, stream


@pytest.fixture(scope="module")
def tok():
    return train_bpe([e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3, TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def model(tok):
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=96)
    return build_causal_lm(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0).eval()


PROMPTS = ["### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "Sort the words: cat dog"]


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
