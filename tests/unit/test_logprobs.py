"""Token log-probabilities and prompt echo without Ray: what evaluation harnesses (lm-eval's
local-completions) rely on, checked against a direct forward pass of the same tiny GPT-2; and the
request fields around them, refused with the field named when the server cannot honour them."""

import math

import pytest
import torch
from pydantic import ValidationError

from components.core.models import ModelConfig, build_model
from components.data.config import TokenizerConfig
from components.data.tokenizer import train_bpe
from components.deploy import api
from components.deploy.generation import Params, generate, logprobs_of
from tests.unit.conftest import PROMPTS


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def direct(model, ids):
    """log_softmax of one unpadded forward pass: [len(ids), vocab]."""
    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_echo_with_max_tokens_0_scores_the_prompt_as_a_forward_pass_does(model, tok):
    token_prompt = ids_of(tok, PROMPTS[0])
    text, scored = generate(model, tok, [PROMPTS[1], token_prompt], Params(max_tokens=0, logprobs=3, echo=True))
    assert text.text == PROMPTS[1] and scored.text == tok.decode(token_prompt)  # the prompt, nothing after it
    for c, ids in ((text, ids_of(tok, PROMPTS[1])), (scored, token_prompt)):
        lp = c.logprobs
        assert c.completion_tokens == 0 and c.prompt_tokens == len(ids) and lp.token_ids == ids
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before the first token
        want = direct(model, ids)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lp.token_logprobs[1:]), want, atol=1e-5)
        assert "".join(lp.tokens) == c.text and lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(ids))]
        for top in lp.top_logprobs[1:]:
            values = [v for _, v in top]
            assert len(top) == 3 and values == sorted(values, reverse=True)


def test_generated_tokens_logprobs_are_a_teacher_forced_forward_pass_of_the_raw_logits(model, tok):
    for params in (Params(max_tokens=10, temperature=0, logprobs=5), Params(max_tokens=10, temperature=0.5, top_p=0.9,
                                                                           seed=3, logprobs=5)):
        (c,) = generate(model, tok, [PROMPTS[0]], params)
        prompt, lp = ids_of(tok, PROMPTS[0]), c.logprobs
        answer = lp.token_ids
        assert len(answer) == c.completion_tokens and "".join(lp.tokens) == c.text
        assert lp.text_offset[0] == 0  # offsets count in the returned text: no echo, no prompt
        full = direct(model, prompt + answer)[len(prompt) - 1: -1]  # the distribution before each answer token
        want = full.gather(1, torch.tensor(answer)[:, None])[:, 0]
        # Sampled at temperature 0.5 and top_p 0.9, still scored by the model's own softmax (no temperature).
        assert torch.allclose(torch.tensor(lp.token_logprobs), want, atol=1e-4)
        for t, top in enumerate(lp.top_logprobs):
            values = [v for _, v in top]
            assert len({name for name, _ in top}) == 5 and values == sorted(values, reverse=True)  # 5 keys of a dict
            assert torch.allclose(torch.tensor(values), full[t].topk(5).values, atol=1e-4)
            if params.temperature == 0:  # greedy: the chosen token is the most likely one, named as in `tokens`
                assert top[0] == (lp.tokens[t], lp.token_logprobs[t])


def test_echo_and_generation_together_and_usage(model, tok):
    (plain,) = generate(model, tok, [PROMPTS[1]], Params(max_tokens=6, temperature=0, logprobs=1))
    (both,) = generate(model, tok, [PROMPTS[1]], Params(max_tokens=6, temperature=0, logprobs=1, echo=True))
    n = len(ids_of(tok, PROMPTS[1]))
    assert both.text == PROMPTS[1] + plain.text and both.prompt_tokens == n
    assert both.completion_tokens == plain.completion_tokens  # echo adds no generated tokens
    assert both.logprobs.token_ids[n:] == plain.logprobs.token_ids
    assert torch.allclose(torch.tensor(both.logprobs.token_logprobs[n:]), torch.tensor(plain.logprobs.token_logprobs))
    assert both.logprobs.text_offset[n] == len(PROMPTS[1])
    (echo_only,) = generate(model, tok, [PROMPTS[1]], Params(max_tokens=6, temperature=0, echo=True))
    assert echo_only.text == both.text and echo_only.logprobs is None  # echo without logprobs: the text only


def test_batched_prompts_of_different_lengths_score_as_one_at_a_time(model, tok):
    prompts = [PROMPTS[0], PROMPTS[1], "cat", ids_of(tok, "Add 7 and 9.")]
    for params in (Params(max_tokens=8, temperature=0, logprobs=2), Params(max_tokens=0, logprobs=2, echo=True),
                   Params(max_tokens=4, temperature=0, logprobs=0, echo=True)):
        batch = generate(model, tok, prompts, params)
        for prompt, together in zip(prompts, batch):
            (alone,) = generate(model, tok, [prompt], params)
            assert together.text == alone.text and together.logprobs.tokens == alone.logprobs.tokens
            a = [math.nan if v is None else v for v in together.logprobs.token_logprobs]
            b = [math.nan if v is None else v for v in alone.logprobs.token_logprobs]
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4, equal_nan=True)
            for x, y in zip(together.logprobs.top_logprobs, alone.logprobs.top_logprobs):
                assert (x is None) == (y is None) and len(x or ()) == len(y or ()) == (0 if x is None else params.logprobs)


def test_a_stop_string_cuts_the_logprobs_with_the_text(model, tok):
    (full,) = generate(model, tok, [PROMPTS[0]], Params(max_tokens=12, temperature=0, logprobs=1))
    stop = full.text[len(full.text) // 2:][:2]
    (cut,) = generate(model, tok, [PROMPTS[0]], Params(max_tokens=12, temperature=0, logprobs=1, stop=(stop,)))
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.logprobs.token_ids == full.logprobs.token_ids[: len(cut.logprobs.token_ids)]
    assert all(o < len(cut.text) for o in cut.logprobs.text_offset)


def test_logprobs_of_gives_natural_logs_sorted_top_k():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    chosen, values, ids = logprobs_of(logits, torch.tensor([2, 0]), 2)
    assert torch.allclose(chosen, torch.tensor([1.0 - math.log(math.e**2 + 1 + math.e), -math.log(3)]))
    assert ids[0].tolist() == [0, 2] and values.shape == (2, 2) and bool((values[:, 0] >= values[:, 1]).all())
    assert logprobs_of(logits, torch.tensor([2, 0]), 0)[1].shape == (2, 0)


def test_t5_scores_its_generated_tokens_but_has_no_prompt_to_echo():
    tok = train_bpe(PROMPTS * 20, TokenizerConfig(vocab_size=300, mask_token="<mask>", sentinel_tokens=8))
    t5 = build_model(ModelConfig(architecture="t5", n_layer=1, n_embd=32, n_head=2, n_positions=64), tok, seed=0).eval()
    (c,) = generate(t5, tok, [PROMPTS[1]], Params(max_tokens=5, temperature=0, logprobs=2))
    answer = c.logprobs.token_ids
    encoder = torch.tensor([ids_of(tok, PROMPTS[1]) + [tok.eos_token_id]])
    decoder = torch.tensor([[t5.config.decoder_start_token_id] + answer[:-1]])
    with torch.no_grad():
        full = torch.log_softmax(t5(input_ids=encoder, decoder_input_ids=decoder).logits[0], -1)
    want = full.gather(1, torch.tensor(answer)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(c.logprobs.token_logprobs), want, atol=1e-4)
    with pytest.raises(ValueError, match="echo"):
        generate(t5, tok, [PROMPTS[1]], Params(max_tokens=0, logprobs=2, echo=True))


# --- the request fields ----------------------------------------------------------------------------


def completion(**fields):
    return api.CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})


def chat(**fields):
    return api.ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})


def test_prompts_are_texts_or_token_ids_normalised_to_a_list():
    assert completion(prompt="hi").prompt == ["hi"]
    assert completion(prompt=["a", "b"]).prompt == ["a", "b"]
    assert completion(prompt=[5, 6, 7]).prompt == [[5, 6, 7]]
    assert completion(prompt=[[5, 6], [7]]).prompt == [[5, 6], [7]]
    for bad in ([-1, 2], [True, 3], [1.0, 2], [[1], "a", 2], [[]], [[1, -2]], [], [[1]] * 17, {"ids": [1]}, 3):
        with pytest.raises(ValidationError, match="prompt") as raised:
            completion(prompt=bad)
        assert raised.value.errors()[0]["loc"] == ("prompt",), bad


def unsupported(request) -> str:
    with pytest.raises(api.Unsupported) as raised:
        request.check()
    assert str(raised.value).startswith(raised.value.param + ": ")
    return raised.value.param


def test_fields_the_server_cannot_honour_are_refused_by_name():
    assert unsupported(completion(max_tokens=0)) == "max_tokens"  # nothing to do without echo
    assert unsupported(completion(logprobs=0, stream=True)) == "logprobs"
    assert unsupported(completion(echo=True, stream=True)) == "echo"
    assert unsupported(completion(best_of=2)) == "best_of"
    assert unsupported(completion(suffix="end")) == "suffix"
    assert unsupported(completion(logit_bias={"50256": -100})) == "logit_bias"
    assert unsupported(completion(presence_penalty=0.5)) == "presence_penalty"
    assert unsupported(chat(frequency_penalty=-1)) == "frequency_penalty"
    assert unsupported(chat(top_logprobs=2)) == "top_logprobs"  # without logprobs: true, as OpenAI
    assert unsupported(chat(top_logprobs=2, logprobs=False)) == "top_logprobs"
    assert unsupported(chat(logprobs=True, stream=True)) == "logprobs"
    assert unsupported(chat(tools=[{"type": "function", "function": {"name": "f"}}])) == "tools"
    assert unsupported(chat(tool_choice="auto")) == "tool_choice"
    assert unsupported(chat(response_format={"type": "json_object"})) == "response_format"
    # What changes nothing in the answer is accepted as it is.
    for ok in (completion(max_tokens=0, echo=True, logprobs=5), completion(user="u", logprobs=None, best_of=1, logit_bias={},
                                                                             presence_penalty=0, suffix=""),
               chat(logprobs=True, top_logprobs=20), chat(response_format={"type": "text"}, tool_choice="none", tools=[])):
        ok.check()
    assert chat(logprobs=True, top_logprobs=3).top_k() == 3 and chat(logprobs=True).top_k() == 0 and chat().top_k() is None
    for bad in (lambda: completion(logprobs=6), lambda: completion(logprobs=-1), lambda: chat(top_logprobs=21),
                lambda: chat(max_tokens=0), lambda: completion(best_of=21)):
        with pytest.raises(ValidationError):
            bad()


def test_response_bodies_have_openais_logprobs_shapes():
    tokens, lps, tops, offsets = ["a", " b"], [None, -0.5], [None, [(" b", -0.5), (" c", -1.5)]], [0, 1]
    body = api.completion_body("m", [("a b", "length")], api.Usage(prompt_tokens=2, completion_tokens=0, total_tokens=2),
                               logprobs=[api.completion_logprobs(tokens, lps, tops, offsets)])
    assert body["choices"][0]["logprobs"] == {"tokens": tokens, "token_logprobs": lps,
                                              "top_logprobs": [None, {" b": -0.5, " c": -1.5}], "text_offset": offsets}
    assert api.completion_body("m", [("x", "stop")], api.Usage(prompt_tokens=1, completion_tokens=1,
                                                               total_tokens=2))["choices"][0]["logprobs"] is None
    content = api.chat_logprobs(["é"], [-0.25], [[("é", -0.25), ("e", -2.0)]])["content"]
    assert content == [{"token": "é", "logprob": -0.25, "bytes": [195, 169],
                        "top_logprobs": [{"token": "é", "logprob": -0.25, "bytes": [195, 169]},
                                         {"token": "e", "logprob": -2.0, "bytes": [101]}]}]


def test_a_quantized_model_is_scored_by_its_own_integer_weights(model, tok, tmp_path):
    """As a replica serves it: the int8 model loaded from its folder (load_trained), whose echo
    log-probabilities are its own forward pass, not the float model's it came from."""
    import copy

    from components.core.models import load_trained
    from components.core.quantize import quantize, save_quantized

    save_quantized(quantize(copy.deepcopy(model), "int8_dynamic"), tmp_path / "int8", "int8_dynamic")
    tok.save_pretrained(tmp_path / "int8")
    served = load_trained(tmp_path / "int8")
    ids = ids_of(tok, PROMPTS[0])
    (scored,) = generate(served, tok, [ids], Params(max_tokens=0, logprobs=1, echo=True))
    got = torch.tensor(scored.logprobs.token_logprobs[1:])
    target = torch.tensor(ids[1:])[:, None]
    own, float_model = (direct(m, ids)[:-1].gather(1, target)[:, 0] for m in (served, model))
    assert torch.allclose(got, own, atol=1e-5)
    assert (got - float_model).abs().max() > 1e-4  # the integer weights moved them: a float model would not pass
