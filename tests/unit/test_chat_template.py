"""Pretrained checkpoints with their own chat template: Alpaca prompts rendered through it for training,
scoring and preference pairs (the loss on the assistant's tokens only), the project's own tokenizers left
byte-identical, and generation that stops on the generation config's eos ids as well as the tokenizer's."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from components.core.chat import answer_end_id, prompt_format, prompt_ids, render_prompt, stop_token_ids
from components.core.models import ModelConfig, build_causal_lm
from components.core.preference import sequence_logprobs
from components.core.sft import IGNORE_INDEX, encode_pair, encode_split, greedy_answer_ids, greedy_answers
from components.data.config import TokenizerConfig
from components.data.instructions import CHAT_TEMPLATE, Example, format_prompt, generate_tasks
from components.data.preferences import PreferencePair
from components.data.tokenizer import train_bpe
from components.deploy.generation import Params, generate, stream
from components.rlhf import step as rlhf_step

# Qwen2.5-Instruct's shape without its default system prompt; the Llama-3 flavour starts with the BOS text.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WITH_BOS = "{{ bos_token }}" + CHATML

ADD = format_prompt("Add 2 and 3.")
FIELD = format_prompt("What is the color?", "color: red; size: big")
CHATML_ADD = "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n"
CHATML_FIELD = "<|im_start|>user\nWhat is the color?\n\ncolor: red; size: big<|im_end|>\n<|im_start|>assistant\n"
DOCS = [e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3


@pytest.fixture(scope="module")
def project_tok():
    return train_bpe(DOCS, TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def chatml_tok():
    """A tiny ChatML tokenizer: eos = <|im_end|> (the end of turn), <|im_start|> a special token, bos <|endoftext|>."""
    tok = train_bpe(DOCS, TokenizerConfig(vocab_size=400, eos_token="<|im_end|>", bos_token="<|endoftext|>"))
    tok.add_tokens(["<|im_start|>"], special_tokens=True)
    tok.chat_template = CHATML
    return tok


def llama(tok, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def forced(tok, token: int, stops: list[int] | None) -> LlamaForCausalLM:
    """A model whose every next token is `token` (a one-hot lm_head bias), with generation_config.eos_token_id = stops."""
    model = llama(tok)
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 10.0
    model.lm_head = head
    model.generation_config.eos_token_id = stops
    return model


# --- the project's tokenizers: nothing changes -----------------------------------------------------


def test_the_projects_template_and_no_template_leave_the_prompt_as_it_is(project_tok, tmp_path):
    assert project_tok.chat_template == CHAT_TEMPLATE and prompt_format(project_tok) == "alpaca"
    project_tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # how every step loads it: the template survives byte for byte
    bare = AutoTokenizer.from_pretrained(tmp_path)
    bare.chat_template = None
    assert prompt_format(bare) == "alpaca, no chat template"
    for tok in (project_tok, reloaded, bare):
        for prompt in (ADD, FIELD, "not an Alpaca prompt"):
            assert render_prompt(tok, prompt) == prompt
        # encode_pair is what it was: prompt tokens, response tokens, eos
        p = tok(FIELD, add_special_tokens=False)["input_ids"]
        r = tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert encode_pair(tok, FIELD, "red") == (p + r, [IGNORE_INDEX] * len(p) + r)


def test_the_projects_models_stop_on_their_eos_only(project_tok):
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64)
    model = build_causal_lm(cfg, len(project_tok), project_tok.bos_token_id, project_tok.eos_token_id, project_tok.pad_token_id, 0)
    assert stop_token_ids(model, project_tok) == [project_tok.eos_token_id]


# --- a model's own chat template --------------------------------------------------------------------


def test_an_alpaca_prompt_becomes_one_user_message_of_the_models_template(chatml_tok):
    assert prompt_format(chatml_tok) == "chat template"
    assert render_prompt(chatml_tok, ADD) == CHATML_ADD
    assert render_prompt(chatml_tok, FIELD) == CHATML_FIELD
    assert render_prompt(chatml_tok, "Say hi") == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    ids = prompt_ids(chatml_tok, ADD)
    start = chatml_tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids.count(start) == 2 and ids.count(chatml_tok.eos_token_id) == 1  # special tokens stay whole


def test_the_labels_cover_the_assistants_tokens_and_its_end_of_turn_only(chatml_tok, tmp_path):
    ids, labels = encode_pair(chatml_tok, FIELD, "red")
    prompt = chatml_tok(CHATML_FIELD, add_special_tokens=False)["input_ids"]
    answer = chatml_tok("red", add_special_tokens=False)["input_ids"] + [chatml_tok.convert_tokens_to_ids("<|im_end|>")]
    assert ids == prompt + answer
    assert labels == [IGNORE_INDEX] * len(prompt) + answer
    # encode_split goes through encode_pair: every caller of the fine-tuning data gets the rendering
    pairs = encode_split(tmp_path / "train.jsonl", [Example("copy_field", FIELD, "red")], chatml_tok, context=256)
    assert pairs == [(ids, labels)]
    with pytest.raises(ValueError, match="train.jsonl:1: prompt \\+ response"):
        encode_split(tmp_path / "train.jsonl", [Example("copy_field", FIELD, "red")], chatml_tok, context=len(ids) - 1)


def test_a_template_that_writes_the_bos_text_keeps_exactly_one_bos(chatml_tok):
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(chatml_tok.backend_tokenizer.to_str()),
                                  bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|pad|>", unk_token="<|unk|>")
    bos = tok.bos_token_id
    # A Llama-3-like tokenizer: its post-processor puts BOS in front of whatever it encodes with special tokens.
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    tok.chat_template = WITH_BOS
    text = render_prompt(tok, ADD)
    assert text.startswith("<|endoftext|><|im_start|>user\n")
    assert tok(text)["input_ids"][:2] == [bos, bos]  # the trap: default encoding would double it
    ids, labels = encode_pair(tok, ADD, "5")
    assert ids[0] == bos and ids.count(bos) == 1 and labels[0] == IGNORE_INDEX


def test_greedy_answers_read_the_rendered_prompt_and_return_text(chatml_tok):
    model = llama(chatml_tok)
    prompts, rendered = [ADD, FIELD], [CHATML_ADD, CHATML_FIELD]
    answers = greedy_answers(model, chatml_tok, prompts, max_new_tokens=6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # the ids are the continuation of the rendered prompt, batched or alone
    for text, got in zip(rendered, greedy_answer_ids(model, chatml_tok, prompts, max_new_tokens=6)):
        ids = torch.tensor([chatml_tok(text, add_special_tokens=False)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=chatml_tok.eos_token_id, pad_token_id=chatml_tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert got == (out[: out.index(chatml_tok.eos_token_id)] if chatml_tok.eos_token_id in out else out)


def test_preference_pairs_are_encoded_and_scored_through_the_same_path(chatml_tok, tmp_path):
    pair = PreferencePair(FIELD, "red", "big", "copy_field", "wrong")
    [(chosen, rejected)] = rlhf_step._encode([pair], chatml_tok, 256, tmp_path / "train.jsonl")
    assert chosen == encode_pair(chatml_tok, FIELD, "red") and rejected == encode_pair(chatml_tok, FIELD, "big")
    # DPO's log p(answer | prompt): the answer's tokens and <|im_end|>, nothing of the rendered prompt
    model = llama(chatml_tok)
    chosen_scores, _ = rlhf_step.score_pairs(model, chatml_tok, [pair])
    ids, labels = chosen
    prompt = chatml_tok(CHATML_FIELD, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt)
    assert ids[:n_prompt] == prompt and labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0]
    manual = sum(logprobs[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
    assert chosen_scores[0] == pytest.approx(manual, abs=1e-4)
    assert sequence_logprobs(model(input_ids=torch.tensor([ids])).logits, torch.tensor([labels])).item() == pytest.approx(manual, abs=1e-4)


# --- stop tokens of the generation config --------------------------------------------------------------


def test_generation_stops_on_a_generation_config_eos_that_is_not_the_tokenizers(chatml_tok):
    word = chatml_tok("red", add_special_tokens=False)["input_ids"][0]  # an ordinary token: decoding would not hide it
    params = Params(max_tokens=5, temperature=0)
    free = forced(chatml_tok, word, None)
    assert stop_token_ids(free, chatml_tok) == [chatml_tok.eos_token_id]
    [c] = generate(free, chatml_tok, [render_prompt(chatml_tok, ADD)], params)
    assert (c.finish_reason, c.completion_tokens) == ("length", 5) and c.text == chatml_tok.decode([word] * 5)

    stopping = forced(chatml_tok, word, [chatml_tok.eos_token_id, word])  # Llama-3-Instruct's [<|end_of_text|>, <|eot_id|>] shape
    assert stop_token_ids(stopping, chatml_tok) == [chatml_tok.eos_token_id, word]
    [c] = generate(stopping, chatml_tok, [render_prompt(chatml_tok, ADD), render_prompt(chatml_tok, FIELD)], params)[:1]
    assert (c.text, c.finish_reason, c.completion_tokens) == ("", "stop", 1)
    pieces = list(stream(stopping, chatml_tok, render_prompt(chatml_tok, ADD), params))
    assert "".join(t for t, _ in pieces) == "" and pieces[-1] == ("", "stop")
    assert greedy_answer_ids(stopping, chatml_tok, [ADD], 5) == [[]]  # scoring stops there too
    stopping.generation_config.eos_token_id = word  # an int works as well as a list
    assert stop_token_ids(stopping, chatml_tok) == [chatml_tok.eos_token_id, word]


def test_the_text_is_cut_before_the_first_stop_token(chatml_tok):
    """A stop id met mid-answer: the text before it comes back, batched and streamed alike."""
    model, params = llama(chatml_tok, seed=3), Params(max_tokens=8, temperature=0)
    prompt = render_prompt(chatml_tok, ADD)
    ids = torch.tensor([chatml_tok(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         eos_token_id=chatml_tok.eos_token_id, pad_token_id=chatml_tok.pad_token_id)[0, ids.shape[1]:].tolist()
    special = set(chatml_tok.all_special_ids)
    k = next((k for k in range(1, len(out)) if out[k] not in out[:k] and out[k] not in special), None)
    if k is None:
        pytest.skip("this random model repeats one token")
    model.generation_config.eos_token_id = [chatml_tok.eos_token_id, out[k]]
    [c] = generate(model, chatml_tok, [prompt], params)
    assert (c.text, c.finish_reason, c.completion_tokens) == (chatml_tok.decode(out[:k], skip_special_tokens=True), "stop", k + 1)
    pieces = list(stream(model, chatml_tok, prompt, params))
    assert "".join(t for t, _ in pieces) == c.text and pieces[-1] == ("", "stop")


def test_the_answer_ends_with_the_templates_own_end_of_turn_where_it_is_not_the_eos(chatml_tok):
    # Gemma's way: eos is one token, the template closes a turn with another; the model was tuned to the latter.
    tok = copy.deepcopy(chatml_tok)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.eos_token = tok.pad_token
    tok.chat_template = ("{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\\n' + m['content'] + '<end_of_turn>\\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
    turn_end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert answer_end_id(tok) == turn_end != tok.eos_token_id
    ids, labels = encode_pair(tok, format_prompt("Reverse: a b"), "b a")
    assert ids[-1] == labels[-1] == turn_end
    assert stop_token_ids(llama(tok), tok)[:2] == [tok.eos_token_id, turn_end]
    # ChatML closes a turn with its eos: nothing changes there.
    assert answer_end_id(chatml_tok) == chatml_tok.eos_token_id
