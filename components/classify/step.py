"""Ray wiring of the classify phase: read and encode the task's data, score the untrained head,
fine-tune (Ray Train), score again; optionally the same fine-tuning from a fresh encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from components import tracking, training
from components.artifact import Artifact, StepContext
from components.classify.config import ClassifyConfig
from components.classify.data import load_examples
from components.classify.loop import build_classifier, train_loop
from components.core.classification import frame, score
from components.core.models import family_of, load_trained
from components.core.peft_methods import trainable_parameters
from components.report import plot_curves
from components.sweep import run_sweep

SHOWN = ("step", "loss", "heldout_accuracy")


def run(cfg: ClassifyConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Fine-tune the masked model input on cfg.task; returns the classifier (a Hugging Face model dir)."""
    base = next(a for a in inputs.values() if a.kind == "model")
    config = AutoConfig.from_pretrained(base.path)
    if family_of(config) != "masked":
        raise ValueError(f"{base.uri}: classify fine-tunes a masked (bert) encoder, got a {config.model_type} model")

    # 1. Data, checked before any worker starts: every example fits, every label is known.
    tokenizer = frame(AutoTokenizer.from_pretrained(base.path))
    max_length = min(cfg.max_length, config.max_position_embeddings)
    train, test, labels = load_examples(cfg, tokenizer, max_length)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"train_examples": len(train), "test_examples": len(test)})

    # 2. The untrained head on the pretrained encoder: about chance, what fine-tuning must beat.
    model, _ = build_classifier(str(base.path), cfg, labels)
    trainable, total = trainable_parameters(model)
    before = score(model, test, labels, tokenizer.pad_token_id)
    del model

    # 3. Fine-tune (or sweep LoRA rank); the export is the merged model with its label names and the tokenizer.
    loop_config = {"cfg": cfg.model_dump(), "train": train, "test": test, "labels": labels, "base_dir": base.uri, "scratch": False}
    best = {}
    if cfg.sweep is None:
        export = training.fit(train_loop, loop_config, ctx, cfg.max_failures, SHOWN)
    else:
        export, best = _sweep(cfg, loop_config, ctx)
        trainable, _ = trainable_parameters(build_classifier(str(base.path), cfg.model_copy(update={
            "lora": cfg.lora.model_copy(update={"r": best["r"], "alpha": best["alpha"]})}), labels)[0])
    shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
    shutil.rmtree(export)
    after = score(load_trained(ctx.output_dir), test, labels, tokenizer.pad_token_id)
    if cfg.sweep is None:
        plot_curves(ctx)

    metrics = {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}
    metrics |= {"trainable_params": trainable, "trainable_share": trainable / total,
                "train_examples": len(train), "test_examples": len(test), **{f"best_{k}": v for k, v in best.items()}}

    # 4. Optionally the same fine-tuning from a freshly initialised encoder: what pretraining bought.
    if cfg.baseline:
        run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, ctx.cache_key, "scratch", {"scratch": True})
        export = training.fit(train_loop, {**loop_config, "scratch": True}, ctx, cfg.max_failures, SHOWN, part="scratch", run_id=run_id)
        scratch = score(load_trained(export / "model"), test, labels, tokenizer.pad_token_id)
        shutil.rmtree(export)
        tracking.log_metrics(ctx.tracking_uri, run_id, scratch)
        tracking.end_run(ctx.tracking_uri, run_id)
        metrics |= {f"{k}_scratch": v for k, v in scratch.items()}
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)

    headline = f"{cfg.task} accuracy {before['accuracy']:.1%} (untrained head) -> {after['accuracy']:.1%}"
    if "entity_f1_after" in metrics:
        headline += f", entity F1 {after['entity_f1']:.2f}"
    if cfg.baseline:
        headline += f"; from scratch {metrics['accuracy_scratch']:.1%}"
    if best:
        headline += f"; best of {best['trials']} LoRA ranks: {best['r']}"
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)


def _sweep(cfg: ClassifyConfig, loop_config: dict, ctx: StepContext) -> tuple[Path, dict]:
    """A Ray Tune sweep over LoRA rank (components/finetune/sweep.py): each trial trains on the training
    examples less a seeded `validation_fraction`, and is ranked by its accuracy there."""
    train = loop_config["train"]
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    cut = max(1, int(len(train) * cfg.validation_fraction))
    held = {"train": [train[i] for i in order[cut:]], "test": [train[i] for i in order[:cut]]}
    return run_sweep(cfg, train_loop, {**loop_config, **held}, ctx, metric="heldout_accuracy", mode="max")
