"""Serving the encoder and seq2seq families without Ray: kinds and routes, the classify schemas, label
probabilities, words and entities, seq2seq generation without a prompt echo, the deploy checks."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import BertForSequenceClassification, BertForTokenClassification

from components.core.classification import frame
from components.core.models import ModelConfig, build_model
from components.data.config import TokenizerConfig
from components.data.tokenizer import train_bpe
from components.deploy import api, classify, kinds
from components.deploy.config import DeployConfig
from components.deploy.generation import Params, generate, stream

SENTIMENT = {0: "negative", 1: "positive", 2: "neutral"}
NER = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
DOCS = ["John Smith lives in Paris, France.", "the cat sat on the mat", "Add 2 and 3. Sort the words: cat dog"]


def tiny_models(root: Path) -> dict[str, Path]:
    """Untrained tiny models saved as the classify and seq2seq phases save theirs: {kind: folder}.

    A tokenizer with a mask token and sentinels; a t5 built from config; bert encoders with a
    sequence head (3 labels) and a token head (BIO labels), named in config.id2label.
    """
    tok = train_bpe(DOCS * 20, TokenizerConfig(vocab_size=400, mask_token="<mask>", sentinel_tokens=32))
    size = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    t5 = teach(build_model(ModelConfig(architecture="t5", **size), tok, seed=0), tok)
    bert = build_model(ModelConfig(architecture="bert", **size), tok, seed=0).config
    heads = {"sequence-classification": (BertForSequenceClassification, SENTIMENT),
             "token-classification": (BertForTokenClassification, NER)}
    models = {"seq2seq": t5}
    for kind, (cls, id2label) in heads.items():
        label2id = {v: k for k, v in id2label.items()}
        config = bert.__class__.from_dict({**bert.to_dict(), "id2label": id2label, "label2id": label2id})
        torch.manual_seed(0)
        models[kind] = cls(config)
    out = {}
    for kind, model in models.items():
        if kind != "seq2seq":
            frame(tok)  # as the classify phase saves a classifier's tokenizer: [eos] text [eos] (pair [eos]), token types
        model.save_pretrained(root / kind)  # safetensors
        tok.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


ANSWERS = {"Add 2 and 3.": "5", "Sort the words: dog cat": "cat dog"}


def teach(t5, tok, steps: int = 40):
    """A few Adam steps on ANSWERS (a second or two): an untrained T5 repeats its decoder start (pad) token and
    says nothing, while a taught one gives an answer that is not its prompt."""
    from torch.nn.utils.rnn import pad_sequence

    def batch(texts, fill):
        return pad_sequence([torch.tensor(tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for t in texts],
                            batch_first=True, padding_value=fill)

    ids, labels = batch(ANSWERS, tok.pad_token_id), batch(ANSWERS.values(), -100)
    t5.train()
    optimizer = torch.optim.Adam(t5.parameters(), lr=2e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs tens of times slower on two threads of a busy machine
    try:
        for _ in range(steps):
            t5(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return t5.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def loaded(saved):
    from transformers import AutoTokenizer

    return {kind: (kinds.auto_class(kinds.kind_at(path)).from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
            for kind, path in saved.items()}


def test_the_kind_comes_from_config_json_and_sets_loader_and_routes(saved, tmp_path):
    assert {kind: kinds.kind_at(path) for kind, path in saved.items()} == {k: k for k in saved}
    assert kinds.auto_class("seq2seq").__name__ == "AutoModelForSeq2SeqLM"
    assert kinds.ROUTES["seq2seq"] == kinds.ROUTES["causal"] == ("/v1/completions", "/v1/chat/completions")
    assert kinds.ROUTES["token-classification"] == ("/v1/classify",)
    tok = train_bpe(DOCS, TokenizerConfig(vocab_size=300, mask_token="<mask>"))
    build_model(ModelConfig(architecture="bert", n_layer=1, n_embd=32, n_head=2), tok).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ValueError, match="classifier first"):  # a pretrained BERT has no route
        kinds.kind_at(tmp_path / "mlm")
    build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2), tok).save_pretrained(tmp_path / "gpt2")
    assert kinds.kind_at(tmp_path / "gpt2") == "causal"


def test_classify_request_schema():
    one = api.ClassifyRequest(input="a text")
    assert one.model is None and one.items() == [("a text", None)] and one.aggregation == "word"
    pairs = api.ClassifyRequest.model_validate({"model": "m", "input": ["x", {"text": "premise", "text_pair": "hypothesis"}]})
    assert pairs.items() == [("x", None), ("premise", "hypothesis")]
    assert api.ClassifyRequest.model_validate({"input": {"text": "a", "text_pair": "b"}}).items() == [("a", "b")]
    for bad in ({}, {"input": []}, {"input": ["x"] * 65}, {"input": "  "}, {"input": 3}, {"input": {"text": "a"}},
                {"input": {"text": "a", "text_pair": "b", "label": 1}}, {"input": "x", "aggregation": "sentence"}):
        with pytest.raises(ValidationError):
            api.ClassifyRequest.model_validate(bad)
    for schema in (api.ClassifyRequest, api.TextPair, api.LabelScore, api.Entity, api.Tagged):
        assert all(f.description for f in schema.model_fields.values()), schema


def test_sequence_labels_come_from_id2label_with_probabilities_summing_to_one(loaded):
    model, tok = loaded["sequence-classification"]
    labels = kinds.labels(model)
    assert labels == ["negative", "positive", "neutral"]
    items = [("the cat sat", None), ("John lives in Paris", "a man lives in France"), ("mat", None)]
    batch = classify.classify(model, tok, items, labels)
    alone = [classify.classify(model, tok, [item], labels)[0] for item in items]
    for scores, single in zip(batch, alone):
        assert list(scores) == labels and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert scores == pytest.approx(single, abs=1e-5)  # padding in a batch does not change an answer
    assert batch[0] != pytest.approx(batch[2])  # the answer depends on the input
    label, score = classify.best({"a": 0.2, "b": 0.7, "c": 0.1})
    assert (label, score) == ("b", 0.7)
    # The saved tokenizer frames the inputs as the classifier was trained: [eos] text [eos] pair [eos], token types 0 / 1.
    framed = tok("ab", "cd", return_token_type_ids=True)
    assert framed["input_ids"][0] == framed["input_ids"][-1] == tok.eos_token_id and framed["token_type_ids"][-1] == 1
    assert classify.input_tokens(tok, ("ab", "cd")) == len(framed["input_ids"])


def test_words_are_the_tokenizers_words_with_trimmed_character_offsets(loaded):
    model, tok = loaded["token-classification"]
    text = "John Smith lives in Paris, France."
    words = classify.tag(model, tok, [text, "the cat"], kinds.labels(model))
    assert [w.word for w in words[0]] == ["John", "Smith", "lives", "in", "Paris", ",", "France", "."]
    assert all(text[w.start:w.end] == w.word and w.entity in NER.values() and 0 < w.score <= 1 for w in words[0])
    assert [w.word for w in words[1]] == ["the", "cat"]  # the shorter text's padding makes no words
    # A word's label is read at its first token: a word of several tokens still has one entry.
    spans = classify.word_spans("ab  cd", [None, 0, 0, 1, None], [[0, 0], [0, 1], [1, 2], [2, 6], [0, 0]])
    assert spans == [(0, 2, 1), (4, 6, 3)]


def test_entities_drop_o_and_merge_bio_spans():
    text = "John Smith lives in New York and Paris"
    words = [classify.Word(w, s, s + len(w), label, score) for w, s, label, score in [
        ("John", 0, "B-PER", 0.9), ("Smith", 5, "I-PER", 0.7), ("lives", 11, "O", 0.99), ("in", 17, "O", 0.9),
        ("New", 20, "B-LOC", 0.8), ("York", 24, "I-LOC", 0.6), ("and", 29, "O", 0.9), ("Paris", 33, "B-LOC", 0.5)]]
    assert [(w.word, w.entity) for w in classify.entities(text, words)] == [
        ("John", "B-PER"), ("Smith", "I-PER"), ("New", "B-LOC"), ("York", "I-LOC"), ("Paris", "B-LOC")]
    merged = classify.entities(text, words, "entity")
    assert [(w.word, w.entity, w.start, w.end) for w in merged] == [
        ("John Smith", "PER", 0, 10), ("New York", "LOC", 20, 28), ("Paris", "LOC", 33, 38)]
    assert merged[0].score == pytest.approx(0.8)
    # B- starts a new entity even right after one of the same type; a type change splits; bare labels group.
    tight = [classify.Word(w, 2 * i, 2 * i + 1, label, 1.0)
             for i, (w, label) in enumerate(zip("abcde", ["B-LOC", "B-LOC", "I-PER", "NOUN", "NOUN"]))]
    assert [(w.word, w.entity) for w in classify.entities("a b c d e", tight, "entity")] == [
        ("a", "LOC"), ("b", "LOC"), ("c", "PER"), ("d e", "NOUN")]


def test_seq2seq_generation_does_not_echo_the_prompt_and_batches(loaded):
    model, tok = loaded["seq2seq"]
    prompts = list(ANSWERS)
    params = Params(max_tokens=6, temperature=0)
    batch = generate(model, tok, prompts, params)
    assert [c.text for c in batch] == list(ANSWERS.values()) and [c.finish_reason for c in batch] == ["stop", "stop"]
    alone = [generate(model, tok, [p], params)[0] for p in prompts]
    assert [c.text for c in batch] == [c.text for c in alone]  # right padding of the encoder input changes nothing
    # The decoder's own greedy output, without its start token: no prompt echo to strip.
    ids = torch.tensor([tok(prompts[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    raw = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[0, 1:].tolist()
    raw = raw[: raw.index(tok.eos_token_id)] if tok.eos_token_id in raw else raw
    assert batch[1].text == tok.decode(raw, skip_special_tokens=True) and batch[1].text
    assert batch[1].prompt_tokens == ids.shape[1] and 1 <= batch[1].completion_tokens <= 6
    pieces = list(stream(model, tok, prompts[1], params))
    assert "".join(t for t, _ in pieces) == batch[1].text and pieces[-1][1] in ("stop", "length")


def test_rag_is_refused_on_a_model_that_is_not_causal(saved):
    from components.deploy.step import check_servable

    with pytest.raises(ValueError, match="field 'rag'.*seq2seq"):
        check_servable(DeployConfig(rag={}), str(saved["seq2seq"]))
    with pytest.raises(ValueError, match="field 'rag'.*sequence-classification"):
        check_servable(DeployConfig(rag={}), str(saved["sequence-classification"]))
    assert check_servable(DeployConfig(), str(saved["token-classification"])) == "token-classification"


def test_the_validator_lets_deploy_and_gate_take_every_family():
    from workflows.phases import PHASES

    assert set(PHASES["deploy"].families) == set(PHASES["gate"].families) == {"causal", "masked", "seq2seq"}
