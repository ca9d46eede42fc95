"""Compression of an encoder classifier: the distillation loss by hand, a BERT student from the teacher's blocks,
the task read back, a BERT's encoder pruned (zeros held by masks, or narrower MLPs), a larger held-out set."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from components.classify.config import ClassifyConfig
from components.classify.data import load_examples
from components.compress.encoder import task_of
from components.core import prune as P
from components.core.classification import frame
from components.core.distill import classifier_distillation_loss
from components.core.models import ModelConfig, build_model, count_parameters
from components.core.prune import keep_layers
from components.data import benchmarks
from components.data.config import TokenizerConfig
from components.data.tokenizer import train_bpe


def test_the_classifier_loss_matches_a_hand_computation():
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # T = 1: KL(teacher=[.5,.5] || student=softmax([2,0])) and CE of label 0.
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    kl = 0.5 * math.log(0.5 / p[0]) + 0.5 * math.log(0.5 / p[1])
    ce = -math.log(p[0])
    loss, parts = classifier_distillation_loss(student, teacher, torch.tensor([0]), temperature=1.0, alpha=0.25)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5) and parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(0.25 * kl + 0.75 * ce, rel=1e-5)
    # T = 2 scales the soft term by T^2; alpha 0 is the labels alone.
    loss2, parts2 = classifier_distillation_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=1.0)
    assert float(loss2) == pytest.approx(4 * parts2["kl"], rel=1e-6)
    assert float(classifier_distillation_loss(student, teacher, torch.tensor([0]), alpha=0.0)[0]) == pytest.approx(ce, rel=1e-5)


def test_token_positions_without_a_label_carry_no_loss():
    student, teacher = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [0, -100, -100, -100, -100]])
    loss, _ = classifier_distillation_loss(student, teacher, labels, 2.0, 0.5)
    changed = student.clone()
    changed[labels == -100] = 100.0  # what the unscored positions predict must not matter
    assert float(classifier_distillation_loss(changed, teacher, labels, 2.0, 0.5)[0]) == pytest.approx(float(loss))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    tok = train_bpe([f"the cat {i} sat on the mat" for i in range(100)], TokenizerConfig(vocab_size=300, mask_token="<mask>"))
    build_model(ModelConfig(architecture="bert", n_layer=4, n_embd=32, n_head=2, n_positions=64), tok).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_a_bert_student_keeps_the_chosen_blocks_and_the_head(bert_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3).eval()
    student = keep_layers(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and count_parameters(student) < count_parameters(teacher)
    assert torch.equal(student.bert.encoder.layer[1].attention.self.query.weight, teacher.bert.encoder.layer[3].attention.self.query.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert student(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3)


def test_the_task_is_read_back_from_the_classifier(bert_dir, tmp_path):
    names = lambda labels: dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})  # noqa: E731
    sst2 = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2, **names(["negative", "positive"]))
    assert task_of(sst2.config) == "sst2"
    mnli = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3, **names(["entailment", "neutral", "contradiction"]))
    assert task_of(mnli.config) == "mnli"
    tagger = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=3, **names(["O", "B-PER", "I-PER"]))
    tagger.save_pretrained(tmp_path)  # the saved config names the head's class, as a classify step's output does
    assert task_of(AutoConfig.from_pretrained(tmp_path)) == "ner"
    with pytest.raises(ValueError, match="none of the classify tasks"):
        task_of(AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2, **names(["spam", "ham"])).config)


def test_pruning_a_bert_classifier_zeroes_only_its_encoder_blocks_and_the_masks_hold(bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3).eval()
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("bert.encoder.layer.")}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    masks = P.prune_unstructured(model, 0.6)
    assert len(P.block_weights(model)) == 4 * 6  # per block: query, key, value, attention output, intermediate, output
    assert P.sparsity(model) == pytest.approx(0.6, abs=1e-3)
    assert set(masks) == {f"{n}.weight" for n, _ in P.block_weights(model)}  # the classifier's own parameter names
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())  # embeddings, pooler, head unpruned
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, before)
    # What the classify loop does after each optimizer step during recovery: every weight moved, the zeros put back.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    model(input_ids=ids, labels=torch.tensor([1])).loss.backward()
    optimizer.step()
    assert P.sparsity(model) < 0.1
    P.apply_masks(model, masks)
    assert P.sparsity(model) == pytest.approx(0.6, abs=1e-3)


def test_channel_pruning_narrows_a_bert_classifiers_mlps(bert_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        assert torch.allclose(P.prune_mlp_channels(model, 1.0)(input_ids=ids).logits, reference, atol=1e-5)
    half = P.prune_mlp_channels(model, 0.5)
    assert half.config.intermediate_size == model.config.intermediate_size // 2
    assert count_parameters(half) < count_parameters(model) and torch.equal(half.classifier.weight, model.classifier.weight)
    half.save_pretrained(tmp_path)  # a plain Hugging Face classifier
    with torch.no_grad():
        assert torch.equal(AutoModelForSequenceClassification.from_pretrained(tmp_path)(input_ids=ids).logits, half(input_ids=ids).logits)


def test_a_larger_generated_held_out_set_starts_with_the_bundled_one_and_misses_training(bert_dir):
    records = benchmarks.dev_records("mnli", 300)
    bundled = benchmarks.labelled_texts("mnli", benchmarks.file_records("mnli", None))
    assert [(t[1], t[2]) for t in bundled] == [(r["premise"], r["hypothesis"]) for r in records[:40]]
    tokenizer = frame(AutoTokenizer.from_pretrained(bert_dir))
    cfg = ClassifyConfig(task="mnli", train_examples=1000)
    train, test, _ = load_examples(cfg, tokenizer, 128, [(f"generated dev record {i}", r) for i, r in enumerate(records)])
    assert len(test) == 300 and 700 < len(train) < 1000  # the overlapping training records are dropped
    assert not {tuple(e["input_ids"]) for e in train} & {tuple(e["input_ids"]) for e in test}
    assert {e["labels"][0] for e in test} == {0, 1, 2}
    with pytest.raises(Exception, match="no generator"):
        benchmarks.dev_records("ner", 10)


@pytest.mark.parametrize("head", [AutoModelForSequenceClassification, AutoModelForTokenClassification])
def test_an_int8_classifier_loads_back_as_its_head_and_predicts_as_the_float_one(bert_dir, tmp_path, head):
    from components.core.models import load_trained
    from components.core.quantize import linear_weight_bytes, quantize, save_quantized

    torch.manual_seed(0)
    model = head.from_pretrained(bert_dir, num_labels=3).eval()
    model.save_pretrained(tmp_path / "float")
    save_quantized(quantize(load_trained(tmp_path / "float"), "int8_dynamic"), tmp_path / "int8", "int8_dynamic")
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(tmp_path / "int8")
    quantized = load_trained(tmp_path / "int8")  # rebuilt from its integer weights, as evaluate loads it
    assert type(quantized).__name__ == type(model).__name__
    assert linear_weight_bytes(quantized) < 0.35 * linear_weight_bytes(model)
    ids = torch.randint(5, model.config.vocab_size, (4, 12))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert a.shape == b.shape and (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
