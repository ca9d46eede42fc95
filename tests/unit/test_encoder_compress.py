"""Distillation of an encoder classifier: the loss by hand, a BERT student from the teacher's blocks, the task read back."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

from components.compress.encoder import task_of
from components.core.distill import classifier_distillation_loss
from components.core.models import ModelConfig, build_model, count_parameters
from components.core.prune import keep_layers
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
