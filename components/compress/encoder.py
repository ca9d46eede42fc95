"""Distillation of an encoder classifier (a `classify` step's output), DistilBERT-style on the task.

The student keeps some of the teacher's blocks (its embeddings and head too) and is fine-tuned on
the task's training data towards the teacher's softened label distribution and the labels
(components/core/distill.classifier_distillation_loss), by the classify phase's own Ray Train loop.
With `baseline`, the same student is trained on the labels alone: what the teacher adds, measured.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from components import storage, tracking, training
from components.artifact import Artifact, StepContext
from components.classify.config import LABELS, ClassifyConfig
from components.classify.loop import train_loop
from components.classify.step import load_examples
from components.compress.config import DistillConfig
from components.core import prune as P
from components.core.classification import collate, score
from components.core.models import count_parameters
from components.report import plot_curves

SHOWN = ("step", "loss", "heldout_accuracy")


def task_of(config) -> str:
    """The classify task a classifier was fine-tuned on, from its head and label names."""
    if config.architectures and config.architectures[0].endswith("ForTokenClassification"):
        return "ner"
    names = tuple(config.id2label[i] for i in range(len(config.id2label)))
    for task, labels in LABELS.items():
        if names == labels:
            return task
    raise ValueError(f"a classifier with labels {names} is none of the classify tasks ({', '.join(LABELS)}, ner)")


def run_distill_classifier(cfg: DistillConfig, source_step: str, source: Artifact, ctx: StepContext) -> Artifact:
    """Distil the classifier `source` into a student of some of its blocks; returns the student."""
    config = AutoConfig.from_pretrained(source.path)
    task = task_of(config)
    head = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    teacher = head.from_pretrained(source.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    training_cfg = ClassifyConfig(
        task=task, method="full", strategy=cfg.training.strategy, max_steps=cfg.training.max_steps,
        micro_batch_size=cfg.training.micro_batch_size, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay,
        warmup_steps=cfg.training.warmup_steps, grad_clip=cfg.training.grad_clip, log_every=cfg.training.log_every,
        checkpoint_every=cfg.training.checkpoint_every, max_failures=cfg.training.max_failures, seed=cfg.training.seed,
    )
    train, test, labels = load_examples(training_cfg, tokenizer, min(training_cfg.max_length, config.max_position_embeddings))

    # 1. The student: some of the teacher's blocks (default: half, first and last included), its head kept.
    n = len(P.transformer_blocks(teacher))
    layers = cfg.student_layers or sorted({int(round(i)) for i in np.linspace(0, n - 1, max(1, n // 2))})
    student = P.keep_layers(teacher, layers)
    if cfg.init == "random":
        torch.manual_seed(cfg.training.seed)
        student = type(student)(student.config)
    student_dir = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}-student")
    with storage.writing(student_dir) as directory:
        student.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    # 2. Fine-tune it towards the teacher (and the labels); optionally on the labels alone.
    def fit(alpha: float, part: str = "", run_id: str | None = None) -> Path:
        distill = {"teacher_dir": source.uri, "alpha": alpha, "temperature": cfg.training.temperature}
        loop_config = {"cfg": training_cfg.model_dump(), "train": train, "test": test, "labels": labels,
                       "base_dir": student_dir, "scratch": False, "distill": distill}
        return training.fit(train_loop, loop_config, ctx, cfg.training.max_failures, SHOWN, part=part, run_id=run_id)

    export = fit(cfg.training.alpha)
    shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
    shutil.rmtree(export)
    distilled = head.from_pretrained(ctx.output_dir).eval()
    plot_curves(ctx)
    metrics = {
        "teacher_accuracy": score(teacher, test, labels, tokenizer.pad_token_id)["accuracy"],
        "accuracy": score(distilled, test, labels, tokenizer.pad_token_id)["accuracy"],
        "student_layers": float(len(layers)), "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(distilled), "params_ratio": count_parameters(distilled) / count_parameters(teacher),
        "speedup": _seconds(teacher, test, tokenizer.pad_token_id) / _seconds(distilled, test, tokenizer.pad_token_id),
    }
    if cfg.baseline:
        run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, ctx.cache_key, "without-teacher", {"alpha": 0.0})
        export = fit(0.0, part="without-teacher", run_id=run_id)
        alone = score(head.from_pretrained(export / "model").eval(), test, labels, tokenizer.pad_token_id)["accuracy"]
        shutil.rmtree(export)
        tracking.log_metrics(ctx.tracking_uri, run_id, {"accuracy": alone})
        tracking.end_run(ctx.tracking_uri, run_id)
        metrics["accuracy_without_teacher"] = alone
    storage.remove(student_dir)

    headline = (f"{task} student {metrics['params_ratio']:.0%} of the weights, x{metrics['speedup']:.1f} faster: accuracy "
                f"{metrics['accuracy']:.1%} (teacher {metrics['teacher_accuracy']:.1%}"
                + (f", without the teacher {metrics['accuracy_without_teacher']:.1%})" if cfg.baseline else ")"))
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.compressed_from": source_step, "lifecycle.compressed_from_run": source.run_id})
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)


@torch.no_grad()
def _seconds(model, examples: list[dict], pad_id: int, repeats: int = 3) -> float:
    """Median seconds for one forward pass over the held-out set in batches of 32 (CPU, this process)."""
    batches = [{k: v for k, v in collate(examples[i : i + 32], pad_id).items() if k != "labels"} for i in range(0, len(examples), 32)]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))
