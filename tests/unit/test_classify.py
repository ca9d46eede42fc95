"""The encoder family's pieces: BERT masking statistics, the task heads on a tiny bert, the framed
inputs and label alignment, the classify phase's data, and the validator's family checks."""


import pytest
import torch

from components.classify.config import ClassifyConfig
from components.classify.data import load_examples
from components.classify.loop import build_classifier
from components.core.classification import collate, encode_text, encode_words, frame, score
from components.core.models import ModelConfig, build_model
from components.core.objectives import mask_tokens
from components.core.tagging import IGNORE
from components.data.config import TokenizerConfig
from components.data.corpus import DataError
from components.data.tokenizer import train_bpe

DOCS = [f"the film {i} is good and the plot of the story is bad but the cast in Paris works for Acme {i * 7}." for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS, TokenizerConfig(vocab_size=400, mask_token="<mask>"))


@pytest.fixture(scope="module")
def pretrained(tokenizer, tmp_path_factory):
    """A saved tiny (untrained) bert MLM with its tokenizer: what the pretrain phase hands classify."""
    directory = tmp_path_factory.mktemp("bert")
    build_model(ModelConfig(architecture="bert", n_layer=2, n_embd=32, n_head=2, n_positions=64), tokenizer, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_masking_chooses_15_percent_of_ordinary_tokens_80_10_10(tokenizer):
    torch.manual_seed(0)
    blocks = torch.randint(4, len(tokenizer), (64, 512))  # ids 0..3 are the special tokens
    blocks[:, ::8] = tokenizer.eos_token_id  # document boundaries: never chosen
    blocks[:, 1::16] = tokenizer.pad_token_id
    out = mask_tokens(blocks, tokenizer, torch.Generator().manual_seed(1))
    special = torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))
    chosen = out["labels"] != IGNORE
    assert not (chosen & special).any(), "a special token was chosen"
    assert torch.equal(out["labels"][chosen], blocks[chosen])  # the label is the original token
    assert (out["input_ids"][~chosen] == blocks[~chosen]).all()  # tokens not chosen are untouched
    share = chosen.sum() / (~special).sum()
    assert 0.14 < share < 0.16
    masked = (out["input_ids"] == tokenizer.mask_token_id) & chosen
    kept = (out["input_ids"] == blocks) & chosen
    replaced = chosen & ~masked & ~kept  # a random token (it may equal the original by chance: counted as kept)
    n = chosen.sum()
    assert 0.78 < masked.sum() / n < 0.82
    assert 0.08 < replaced.sum() / n < 0.12
    assert 0.08 < kept.sum() / n < 0.12
    again = mask_tokens(blocks, tokenizer, torch.Generator().manual_seed(1))
    assert torch.equal(again["input_ids"], out["input_ids"])  # same generator seed, same masks


def test_pairs_are_eos_framed_with_segment_ids(tokenizer):
    framed = frame(train_bpe(DOCS, TokenizerConfig(vocab_size=400, mask_token="<mask>")))
    example = encode_text(framed, "the film", "is good", 1, max_length=64)
    eos = framed.eos_token_id
    ids, types = example["input_ids"], example["token_type_ids"]
    a, b = framed("the film", add_special_tokens=False)["input_ids"], framed("is good", add_special_tokens=False)["input_ids"]
    assert ids == [eos, *a, eos, *b, eos]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert example["labels"] == [1]
    assert framed("the film", "is good")["input_ids"] == ids  # what a server's plain tokenizer call feeds the model
    with pytest.raises(ValueError, match="more than max_length 4"):
        encode_text(framed, "the film", "is good", 1, max_length=4)


def test_word_tags_sit_on_each_words_first_token(tokenizer):
    framed = frame(train_bpe(DOCS, TokenizerConfig(vocab_size=400, mask_token="<mask>")))
    words = ["Zyx", "works", "for", "Acmeqq", "."]  # unseen words split into several tokens
    example = encode_words(framed, words, [1, 0, 0, 5, 0], max_length=64)
    labels, ids = example["labels"], example["input_ids"]
    assert ids[0] == ids[-1] == framed.eos_token_id and labels[0] == labels[-1] == IGNORE
    assert [label for label in labels if label != IGNORE] == [1, 0, 0, 5, 0]
    # each scored token starts its word: decoding from it to the next scored token gives the word back
    starts = [i for i, label in enumerate(labels) if label != IGNORE] + [len(ids) - 1]
    assert [framed.decode(ids[s:e]).strip() for s, e in zip(starts, starts[1:])] == words
    assert len(framed.tokenize("Acmeqq")) > 1


@pytest.mark.parametrize("task,labels,shape", [("sst2", 2, (2,)), ("mnli", 3, (3,)), ("ner", 7, None)])
def test_heads_replace_the_mlm_head_and_score_about_chance(pretrained, task, labels, shape):
    cfg = ClassifyConfig(task=task, train_examples=40, test_examples=20)
    model, tok = build_classifier(str(pretrained), cfg, [str(i) for i in range(labels)])
    train, test, names = load_examples(cfg, tok, 64)
    assert len(names) == labels and model.config.num_labels == labels
    assert not any(k.startswith("cls.") for k in model.state_dict())  # the MLM head is gone
    batch = collate(train[:4], tok.pad_token_id)
    logits = model(**batch).logits
    if task == "ner":
        assert logits.shape == (*batch["input_ids"].shape, labels) and batch["labels"].shape == batch["input_ids"].shape
    else:
        assert logits.shape == (4, *shape) and batch["labels"].shape == (4,)
    again, _ = build_classifier(str(pretrained), cfg, [str(i) for i in range(labels)])
    assert torch.equal(model.classifier.weight, again.classifier.weight)  # the head's init follows the seed
    scores = score(model, test, names, tok.pad_token_id)
    assert 0 <= scores["accuracy"] <= 1 and (task != "ner" or "entity_f1" in scores)


def test_generated_training_items_avoid_the_bundled_test_files(pretrained):
    for task in ("sst2", "mnli"):
        cfg = ClassifyConfig(task=task, train_examples=300)
        tok = frame(build_classifier(str(pretrained), cfg, ["a", "b", "c"])[1])
        train, test, _ = load_examples(cfg, tok, 64)
        assert len(test) == 40 and 250 < len(train) <= 300
        assert not {tuple(e["input_ids"]) for e in train} & {tuple(e["input_ids"]) for e in test}
        assert len({e["labels"][0] for e in train}) == {"sst2": 2, "mnli": 3}[task]  # every class is drawn


def test_lora_trains_adapters_and_the_new_head_and_merges_away(pretrained):
    cfg = ClassifyConfig(task="sst2", method="lora")
    model, _ = build_classifier(str(pretrained), cfg, ["negative", "positive"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable)
    assert not any("word_embeddings" in n for n in trainable)
    merged = model.merge_and_unload()
    assert not any("lora_" in n for n in merged.state_dict()) and "classifier.weight" in merged.state_dict()


def test_a_too_long_training_file_line_is_named(pretrained, tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nthe film is good .\t1\n" + "word " * 80 + "\t0\n")
    cfg = ClassifyConfig(task="sst2", train_path=str(path))
    tok = build_classifier(str(pretrained), cfg, ["negative", "positive"])[1]
    with pytest.raises(DataError, match=rf"{path}:3: \d+ tokens, more than max_length 64"):
        load_examples(cfg, tok, 64)


def test_evaluate_scores_a_classifier_on_the_suites_it_has_labels_for(pretrained, tmp_path):
    from components import tracking
    from components.artifact import Artifact, StepContext
    from components.evaluate import encoder
    from components.evaluate.config import EvaluateConfig

    cfg = ClassifyConfig(task="sst2")
    model, tok = build_classifier(str(pretrained), cfg, ["negative", "positive"])
    (tmp_path / "clf").mkdir()
    model.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    uri = tracking.tracking_uri_for(tmp_path)
    parent = tracking.start_workflow_run(uri, tmp_path, "t", "sha", {}, None)
    run_id = tracking.start_step_run(uri, parent, "eval", "evaluate", "key", [], "sha", {})
    (tmp_path / "out").mkdir()
    ctx = StepContext("eval", "evaluate", tmp_path, tmp_path / "out", str(tmp_path), uri, run_id, "key")

    def evaluate(directory):
        return encoder.run(EvaluateConfig(benchmarks=["sst2", "mnli"]), {"clf": Artifact(str(directory), "model", "r", "k")}, ctx)

    result = evaluate(tmp_path / "clf")
    assert result.kind == "evaluation" and result.metrics["items_sst2"] == 40 and "accuracy_mnli" not in result.metrics
    assert result.metrics["accuracy"] == result.metrics["accuracy_sst2"] == tracking.run_metrics(uri, run_id)["accuracy_sst2"]
    with pytest.raises(ValueError, match="evaluate scores an encoder only as a sequence classifier"):
        evaluate(pretrained)  # a bare masked LM: nothing to score it by


def test_a_sweep_searches_lora_rank_and_keeps_its_own_baseline_out():
    with pytest.raises(ValueError, match="needs method 'lora'"):
        ClassifyConfig(task="ner", sweep={"ranks": [2, 8]})
    with pytest.raises(ValueError, match="baseline and sweep"):
        ClassifyConfig(task="ner", method="lora", baseline=True, sweep={"ranks": [2, 8]})
    assert ClassifyConfig(task="ner", method="lora", sweep={"ranks": [2, 8]}).sweep.ranks == [2, 8]
