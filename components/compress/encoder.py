"""Compression of an encoder classifier (a `classify` step's output), trained on its task's data.

- distill, DistilBERT-style on the task: the student keeps some of the teacher's blocks (its
  embeddings and head too) and is fine-tuned towards the teacher's softened label distribution and
  the labels (components/core/distill.classifier_distillation_loss). With `baseline`, the same
  student is trained on the labels alone: what the teacher adds, measured.
- prune: the encoder blocks' weights pruned by magnitude (components/core/prune.py), then a
  recovery fine-tune, the unpruned classifier as the teacher and the zeros held by their masks.

Both train with the classify phase's own Ray Train loop and score every model on the same
held-out set (`data.test_examples` makes it larger than the bundled 40-item dev file).
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer

from components import storage, tracking, training
from components.artifact import Artifact, StepContext
from components.classify.config import LABELS, ClassifyConfig
from components.classify.data import load_examples
from components.classify.loop import train_loop
from components.compress.config import ClassifierData, DistillConfig, PruneConfig, QuantizeConfig, StudentTraining
from components.compress.wiring import compressed_model, on_a_cpu
from components.core import prune as P
from components.core.classification import collate, score
from components.core.models import count_parameters, load_trained
from components.core.quantize import linear_weight_bytes, quantize, save_quantized
from components.data import benchmarks
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


def _task(source: Artifact, data: ClassifierData, training_cfg: StudentTraining):
    """(task, teacher, tokenizer, classify config, train, test, labels) of the classifier `source`."""
    config = AutoConfig.from_pretrained(source.path)
    task = task_of(config)
    teacher = load_trained(source.path)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    t = training_cfg
    classify = ClassifyConfig(
        task=task, method="full", strategy=t.strategy, max_steps=max(1, t.max_steps), micro_batch_size=t.micro_batch_size,
        lr=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps if t.max_steps else 0, grad_clip=t.grad_clip,
        log_every=t.log_every, eval_every=max(1, t.max_steps), checkpoint_every=t.checkpoint_every,
        max_failures=t.max_failures, seed=t.seed, train_path=data.train_path, test_path=data.test_path,
        train_examples=data.train_examples, data_seed=data.data_seed, max_length=data.max_length,
        **({"test_examples": data.test_examples} if task == "ner" and data.test_examples else {}),
    )
    generated = None
    if task != "ner" and data.test_path is None and data.test_examples:
        generated = [(f"generated dev record {i}", r) for i, r in enumerate(benchmarks.dev_records(task, data.test_examples))]
    train, test, labels = load_examples(classify, tokenizer, min(classify.max_length, config.max_position_embeddings), generated)
    return task, teacher, tokenizer, classify, train, test, labels


def _fit(model, tokenizer, classify: ClassifyConfig, train, test, labels, teacher_uri: str, training_cfg: StudentTraining,
         masks: dict[str, torch.Tensor], ctx: StepContext, part: str = "", run_id: str | None = None) -> Path:
    """Fine-tune `model` with the classify loop (teacher's soft labels when alpha > 0, masks held);
    returns the directory of the trained classifier (the caller removes it)."""
    start = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}-{part or 'start'}-{uuid.uuid4().hex[:8]}")
    with storage.writing(start) as directory:  # the workers (on any node) read the starting weights from the run's storage
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        if masks:
            save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, directory / "masks.safetensors")
    distill = {"teacher_dir": teacher_uri, "alpha": training_cfg.alpha, "temperature": training_cfg.temperature}
    loop_config = {"cfg": classify.model_dump(), "train": train, "test": test, "labels": labels,
                   "base_dir": start, "scratch": False, "distill": distill, "masked": bool(masks)}
    export = training.fit(train_loop, loop_config, ctx, training_cfg.max_failures, SHOWN, part=part, run_id=run_id)
    storage.remove(start)
    return export


def _measure(test: list[dict], labels: list[str], pad_id: int, dirs: dict[str, str]) -> dict[str, float]:
    """Held-out accuracy (and its standard error), parameters and forward seconds of each model directory."""
    out = {}
    for name, directory in dirs.items():
        model = load_trained(directory)  # a quantized classifier too, rebuilt from its integer weights
        acc = score(model, test, labels, pad_id)["accuracy"]
        out |= {f"{name}accuracy": acc, f"{name}accuracy_se": math.sqrt(acc * (1 - acc) / len(test)),
                f"{name}params": float(count_parameters(model)), f"{name}seconds": _seconds(model, test, pad_id),
                f"{name}linear_weight_bytes": float(linear_weight_bytes(model)),
                f"{name}sparsity": P.sparsity(model) if P.block_weights(model) else 0.0}  # quantized layers are not nn.Linear
    return out


def _measured(ctx: StepContext, test, labels, tokenizer, dirs: dict[str, str]) -> dict[str, float]:
    # On a task holding the step's CPUs (as the causal path measures): timing beside training workers measures them too.
    return on_a_cpu(ctx, _measure, test, labels, tokenizer.pad_token_id, {k: str(v) for k, v in dirs.items()})


def run_distill_classifier(cfg: DistillConfig, source_step: str, source: Artifact, ctx: StepContext) -> Artifact:
    """Distil the classifier `source` into a student of some of its blocks; returns the student."""
    task, teacher, tokenizer, classify, train, test, labels = _task(source, cfg.data, cfg.training)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"train_examples": len(train), "test_examples": len(test)})

    # 1. The student: some of the teacher's blocks (default: half, first and last included), its head kept.
    n = len(P.transformer_blocks(teacher))
    layers = cfg.student_layers or sorted({int(round(i)) for i in np.linspace(0, n - 1, max(1, n // 2))})
    student = P.keep_layers(teacher, layers)
    if cfg.init == "random":
        torch.manual_seed(cfg.training.seed)
        student = type(student)(student.config)

    # 2. Fine-tune it towards the teacher (and the labels); optionally the same student on the labels alone.
    export = _fit(student, tokenizer, classify, train, test, labels, source.uri, cfg.training, {}, ctx)
    shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
    shutil.rmtree(export)
    plot_curves(ctx)
    initial = Path(tempfile.mkdtemp(prefix="student-initial-"))  # the student as cut from the teacher, before training
    student.save_pretrained(initial)
    dirs = {"teacher_": source.path, "initial_": initial, "": ctx.output_dir}
    alone = None
    if cfg.baseline:
        run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, ctx.cache_key, "without-teacher", {"alpha": 0.0})
        labels_only = cfg.training.model_copy(update={"alpha": 0.0})
        alone = _fit(student, tokenizer, classify, train, test, labels, source.uri, labels_only, {}, ctx, "without-teacher", run_id)
        dirs["without_teacher_"] = alone / "model"

    # 3. Every model on the same held-out set, side by side.
    m = _measured(ctx, test, labels, tokenizer, dirs)
    shutil.rmtree(initial)
    metrics = {
        "accuracy_initial": m["initial_accuracy"],
        "teacher_accuracy": m["teacher_accuracy"], "teacher_accuracy_se": m["teacher_accuracy_se"],
        "accuracy": m["accuracy"], "accuracy_se": m["accuracy_se"], "test_examples": float(len(test)),
        "student_layers": float(len(layers)), "teacher_params": m["teacher_params"], "student_params": m["params"],
        "params_ratio": m["params"] / m["teacher_params"], "speedup": m["teacher_seconds"] / m["seconds"],
    }
    if alone is not None:
        metrics |= {"accuracy_without_teacher": m["without_teacher_accuracy"],
                    "accuracy_without_teacher_se": m["without_teacher_accuracy_se"]}
        tracking.log_metrics(ctx.tracking_uri, run_id, {"accuracy": m["without_teacher_accuracy"]})
        tracking.end_run(ctx.tracking_uri, run_id)
        shutil.rmtree(alone)

    headline = (f"{task} student {metrics['params_ratio']:.0%} of the weights, x{metrics['speedup']:.1f} faster: accuracy "
                f"{metrics['accuracy']:.1%} ± {metrics['accuracy_se']:.1%} on {len(test)} (teacher {metrics['teacher_accuracy']:.1%}"
                + (f", without the teacher {metrics['accuracy_without_teacher']:.1%})" if alone is not None else ")"))
    return compressed_model(ctx, source_step, source, metrics, headline)


def run_prune_classifier(cfg: PruneConfig, source_step: str, source: Artifact, ctx: StepContext) -> Artifact:
    """Prune the classifier `source`'s encoder blocks by magnitude, then recover on its task; returns the pruned classifier."""
    task, teacher, tokenizer, classify, train, test, labels = _task(source, cfg.data, cfg.recovery)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"train_examples": len(train), "test_examples": len(test)})

    # 1. Prune: zero the smallest block weights (masks kept for recovery), or drop the weakest MLP channels.
    pruned, masks = P.prune(teacher, cfg.method, cfg.sparsity)
    pruned_dir = Path(tempfile.mkdtemp(prefix="pruned-"))  # measured below beside the recovered model
    pruned.save_pretrained(pruned_dir)

    # 2. Recover: the classify loop on the task's data, the unpruned classifier as the teacher, the zeros held.
    if cfg.recovery.max_steps:
        export = _fit(pruned, tokenizer, classify, train, test, labels, source.uri, cfg.recovery, masks, ctx)
        shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
        shutil.rmtree(export)
        plot_curves(ctx)
    else:
        pruned.save_pretrained(ctx.output_dir)
        tokenizer.save_pretrained(ctx.output_dir)

    # 3. The source, the pruned model before recovery and after, on the same held-out set.
    m = _measured(ctx, test, labels, tokenizer, {"source_": source.path, "pruned_": pruned_dir, "": ctx.output_dir})
    shutil.rmtree(pruned_dir)
    removed = 1 - _block_weight_count(ctx.output_dir) / _block_weight_count(source.path)  # channels: gone, not zeroed
    metrics = {
        "source_accuracy": m["source_accuracy"], "source_accuracy_se": m["source_accuracy_se"],
        "accuracy_before_recovery": m["pruned_accuracy"], "accuracy_before_recovery_se": m["pruned_accuracy_se"],
        "accuracy": m["accuracy"], "accuracy_se": m["accuracy_se"], "test_examples": float(len(test)),
        "sparsity": m["sparsity"] if masks else removed, "params": m["params"], "source_params": m["source_params"],
        "params_ratio": m["params"] / m["source_params"], "speedup": m["source_seconds"] / m["seconds"],
    }
    headline = (f"{task} {cfg.method} {metrics['sparsity']:.0%}: accuracy {metrics['source_accuracy']:.1%} -> "
                f"{metrics['accuracy_before_recovery']:.1%} pruned -> {metrics['accuracy']:.1%} recovered "
                f"(± {metrics['accuracy_se']:.1%} on {len(test)})")
    return compressed_model(ctx, source_step, source, metrics, headline)


def run_quantize_classifier(cfg: QuantizeConfig, source_step: str, source: Artifact, ctx: StepContext) -> Artifact:
    """Quantize the classifier `source` (its linear layers; embeddings and norms stay float); returns it,
    with its held-out accuracy, linear-weight bytes and forward speed next to the source's."""
    task, model, tokenizer, _, _, test, labels = _task(source, cfg.data, StudentTraining())
    save_quantized(quantize(copy.deepcopy(model), cfg.method, cfg.group_size), ctx.output_dir, cfg.method)
    tokenizer.save_pretrained(ctx.output_dir)
    m = _measured(ctx, test, labels, tokenizer, {"source_": source.path, "": ctx.output_dir})
    metrics = {
        "source_accuracy": m["source_accuracy"], "source_accuracy_se": m["source_accuracy_se"],
        "accuracy": m["accuracy"], "accuracy_se": m["accuracy_se"], "test_examples": float(len(test)),
        "linear_weight_bytes_ratio": m["linear_weight_bytes"] / m["source_linear_weight_bytes"],
        "speedup": m["source_seconds"] / m["seconds"],
    }
    headline = (f"{task} {cfg.method}: linear weights x{metrics['linear_weight_bytes_ratio']:.2f}, x{metrics['speedup']:.1f} "
                f"faster, accuracy {metrics['source_accuracy']:.1%} -> {metrics['accuracy']:.1%} (± {metrics['accuracy_se']:.1%} on {len(test)})")
    return compressed_model(ctx, source_step, source, metrics, headline)


def _block_weight_count(directory) -> int:
    return sum(m.weight.numel() for _, m in P.block_weights(load_trained(directory)))


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
