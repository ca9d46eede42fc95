"""Ray wiring of the compression phases: quantize, distill and prune, each its own step.

Every step measures the source model and its compressed copy in the same process, one after
the other (parameters, bytes on disk, linear-weight bytes, CPU generation latency and throughput,
held-out exact match), and logs both side by side with their ratios; the evaluate phase then
scores the compressed model like any other, and the workflow's report compares them.
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer

from components import storage, tracking, training
from components.artifact import Artifact, StepContext
from components.compress.config import DistillConfig, Measure, PruneConfig, QuantizeConfig, StudentTraining
from components.compress.encoder import run_distill_classifier, run_prune_classifier, run_quantize_classifier
from components.compress.loop import student_loop
from components.compress.wiring import compressed_model, on_a_cpu
from components.core import prune as P
from components.core.models import context_length, count_parameters, family_of, load_trained, weights_bytes
from components.core.quantize import INTEGER, RECIPE, linear_weight_bytes, quantize, save_quantized, weight_count
from components.core.sft import encode_seq2seq_pair, encode_split
from components.core.speed import generation_speed
from components.data.instructions import Example, read_examples_jsonl, spread
from components.report import plot_curves
from components.scoring import AnswerMemo, exact_match_by_family

SHOWN = ("step", "loss", "kl", "ce", "examples_per_s")


# --- shared -------------------------------------------------------------------------------


def _source(inputs: dict[str, Artifact]) -> tuple[str, Artifact]:
    """The model input, refused when it cannot be compressed as it is: an unmergeable adapter, or already integer."""
    name, model = next((n, a) for n, a in inputs.items() if a.kind == "model")
    adapter = model.path / "adapter" / "adapter_config.json"
    if adapter.exists() and json.loads(adapter.read_text()).get("peft_type") == "PROMPT_TUNING":
        raise ValueError(f"step {name!r}: its soft prompt ({adapter.parent}) cannot be merged into the weights, and compressing "
                         "the base alone would drop it; compress a LoRA, IA3, selective or fully fine-tuned model")
    recipe = model.path / RECIPE
    method = json.loads(recipe.read_text()).get("method") if recipe.exists() else None
    if method in INTEGER:
        raise ValueError(f"step {name!r}: its model is already {method}; compress the float model")
    return name, model


def _test_split(inputs: dict[str, Artifact]) -> list[Example]:
    instructions = next(a for a in inputs.values() if a.kind == "instructions")
    return read_examples_jsonl(instructions.path / "test.jsonl")


def _profiles(source_dir: Path, compressed_dir: Path, test: list[Example], measure: Measure, ctx: StepContext,
              exact_match: bool = False) -> dict[str, float]:
    """Size and speed of the source and the compressed model (as loaded from disk), measured side
    by side on one CPU-holding task; the source's prefixed `source_`, with the ratios a reader looks
    for. Quality next to the source's is the evaluate phase's job; `exact_match` adds the compressed
    model's, for the step's own comparisons (same settings as the variants it is compared with), its
    answers kept for the evaluate step that scores this output (AnswerMemo)."""
    memo = AnswerMemo.of(ctx.cache_key, ctx.storage_path, ctx.step) if exact_match else None
    with ctx.timed("measure"):
        return on_a_cpu(ctx, _measure_side_by_side, str(source_dir), str(compressed_dir), test, measure, memo)


def _measure_side_by_side(source_dir: str, compressed_dir: str, test: list[Example], measure: Measure,
                          memo: AnswerMemo | None) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(compressed_dir)
    models = [load_trained(source_dir), load_trained(compressed_dir)]
    speeds = generation_speed(models, tokenizer, [e.prompt for e in test[: measure.speed_prompts]], measure.new_tokens, measure.repeats)
    profiles = []
    for model, directory, speed in zip(models, (source_dir, compressed_dir), speeds):
        profiles.append({
            "params": float(weight_count(model)),
            "model_bytes": float(weights_bytes(directory)),
            "linear_weight_bytes": float(linear_weight_bytes(model)),
            **speed,
        })
    if memo is not None:
        profiles[1]["exact_match"] = _exact_match(models[1], tokenizer, test, measure, memo)
    return _side_by_side(*profiles)


def _exact_match(model, tokenizer, test: list[Example], measure: Measure, memo: AnswerMemo | None = None) -> float:
    return exact_match_by_family(model, tokenizer, spread(test, measure.test_examples), measure.max_new_tokens, memo)["all"]


def _side_by_side(source: dict[str, float], compressed: dict[str, float]) -> dict[str, float]:
    """Both profiles (the source's prefixed `source_`) and the ratios a reader looks for."""
    out = {**compressed, **{f"source_{k}": v for k, v in source.items()}}
    for key in ("params", "model_bytes", "linear_weight_bytes"):
        out[f"{key}_ratio"] = compressed[key] / source[key]
    out["speedup"] = source["latency_ms"] / compressed["latency_ms"]
    out["throughput_ratio"] = compressed["tokens_per_s"] / source["tokens_per_s"]
    return out


def _pairs(inputs: dict[str, Artifact], tokenizer, context: int) -> dict[str, list]:
    instructions = next(a for a in inputs.values() if a.kind == "instructions")
    return {s: encode_split(instructions.path / f"{s}.jsonl", read_examples_jsonl(instructions.path / f"{s}.jsonl"), tokenizer, context)
            for s in ("train", "validation")}


def _train(student, tokenizer, teacher_uri: str, masks: dict[str, torch.Tensor], cfg: StudentTraining, pairs: dict,
           ctx: StepContext, part: str = "", run_id: str | None = None):
    """Train `student` with the student loop on Ray Train (the teacher, masks held); returns the trained model."""
    if cfg.max_steps == 0:
        return student
    # The workers (on any node) read the initial student from the run's storage.
    init = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}-{part or 'student'}-init-{uuid.uuid4().hex[:8]}")
    with storage.writing(init) as local:
        student.save_pretrained(local)
        tokenizer.save_pretrained(local)
        if masks:
            save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, local / "masks.safetensors")
    loop_config = {"cfg": cfg.model_dump(), "student_dir": init, "teacher_dir": teacher_uri, "masked": bool(masks),
                   "train_pairs": pairs["train"], "val_pairs": pairs["validation"]}
    export = training.fit(student_loop, loop_config, ctx, cfg.max_failures, SHOWN, part=part, run_id=run_id)
    trained = load_trained(export / "model")
    shutil.rmtree(export)
    storage.remove(init)
    return trained


# --- quantize -----------------------------------------------------------------------------


def run_quantize(cfg: QuantizeConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Quantize the (merged) model input; returns the quantized model (safetensors + compression.json)."""
    source_step, source = _source(inputs)
    if family_of(AutoConfig.from_pretrained(source.path)) == "masked":  # a classifier: scored on its task's data
        return run_quantize_classifier(cfg, source_step, source, ctx)
    test = _test_split(inputs)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))

    # 1. The source as served: its merged weights (an adapter beside them is already folded in).
    model = load_trained(source.path)

    # 2. Quantize a copy, write it, and measure what a user loads back from disk.
    save_quantized(quantize(copy.deepcopy(model), cfg.method, cfg.group_size), ctx.output_dir, cfg.method)
    tokenizer.save_pretrained(ctx.output_dir)
    quantized = load_trained(ctx.output_dir)

    # 3. Side by side, and how close the outputs stay: logits and greedy next tokens on the test prompts.
    metrics = {**_profiles(source.path, ctx.output_dir, test, cfg.measure, ctx),
               **_closeness(model, quantized, tokenizer, test[:64])}
    headline = (f"{cfg.method}: linear weights x{metrics['linear_weight_bytes_ratio']:.2f}, latency x{1 / metrics['speedup']:.2f}, "
                f"batched throughput x{metrics['throughput_ratio']:.2f}, top-1 agreement {metrics['top1_agreement']:.1%}")
    return compressed_model(ctx, source_step, source, metrics, headline)


@torch.no_grad()
def _closeness(model, quantized, tokenizer, examples: list[Example]) -> dict[str, float]:
    """max |logit difference| and the share of positions whose greedy next token is unchanged."""
    diffs, same, total = [], 0, 0
    for e in examples:
        ids = torch.tensor([tokenizer(e.prompt, add_special_tokens=False)["input_ids"]])
        inputs = {"input_ids": ids}
        if getattr(model.config, "is_encoder_decoder", False):  # a T5's logits are its decoder's, along the reference answer
            inputs = {k: torch.tensor([v]) for k, v in zip(("input_ids", "labels"), encode_seq2seq_pair(tokenizer, e.prompt, e.response))}
        a, b = model(**inputs).logits.float(), quantized(**inputs).logits.float()
        diffs.append(float((a - b).abs().max()))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[1]
    return {"max_logit_diff": max(diffs), "top1_agreement": same / total}


# --- distill ------------------------------------------------------------------------------


def run_distill(cfg: DistillConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Distil the model input (the teacher) into a smaller student; returns the student."""
    source_step, source = _source(inputs)
    if family_of(AutoConfig.from_pretrained(source.path)) == "masked":  # a classifier: distilled on its task's data
        return run_distill_classifier(cfg, source_step, source, ctx)
    test = _test_split(inputs)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    teacher = load_trained(source.path)
    pairs = _pairs(inputs, tokenizer, context_length(teacher))
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))

    # 1. The student: some of the teacher's blocks, narrower MLPs (or the same shape, freshly initialised).
    n = len(P.transformer_blocks(teacher))
    layers = cfg.student_layers or sorted({int(round(i)) for i in np.linspace(0, n - 1, max(1, n // 2))})
    student = P.keep_layers(teacher, layers)
    if cfg.mlp_keep < 1:
        student = P.prune_mlp_channels(student, cfg.mlp_keep)
    if cfg.init == "random":
        torch.manual_seed(cfg.training.seed)
        student = type(student)(student.config)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"student_layers": len(layers), "student_params": count_parameters(student),
                                                         "teacher_params": count_parameters(teacher)})

    # 2. Train it on the teacher's softened distribution and the labels; optionally the same student on the labels alone.
    distilled = _train(student, tokenizer, source.uri, {}, cfg.training, pairs, ctx)
    distilled.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
    plot_curves(ctx, keys=("loss", "kl", "ce"), ylabel="nats per token")
    metrics = _profiles(source.path, ctx.output_dir, test, cfg.measure, ctx, exact_match=True)
    if cfg.baseline:
        alone = cfg.training.model_copy(update={"alpha": 0.0})
        run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, ctx.cache_key, "without-teacher", {"alpha": 0.0})
        baseline = _train(student, tokenizer, source.uri, {}, alone, pairs, ctx, part="without-teacher", run_id=run_id)
        em = on_a_cpu(ctx, _exact_match, baseline, tokenizer, test, cfg.measure)
        metrics["exact_match_without_teacher"] = em
        tracking.log_metrics(ctx.tracking_uri, run_id, {"exact_match": em})
        tracking.end_run(ctx.tracking_uri, run_id)
    headline = (f"student {metrics['params_ratio']:.0%} of the weights, latency x{1 / metrics['speedup']:.2f}: exact match "
                f"{metrics['exact_match']:.1%}" + (f" (without the teacher {metrics['exact_match_without_teacher']:.1%})" if cfg.baseline else ""))
    return compressed_model(ctx, source_step, source, {**metrics, "student_layers": float(len(layers))}, headline)


# --- prune --------------------------------------------------------------------------------


def run_prune(cfg: PruneConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Prune the model input by magnitude, then recover with a short distillation from it; returns the pruned model."""
    source_step, source = _source(inputs)
    if family_of(AutoConfig.from_pretrained(source.path)) == "masked":  # a classifier: recovered on its task's data
        return run_prune_classifier(cfg, source_step, source, ctx)
    test = _test_split(inputs)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = load_trained(source.path)
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))

    # 1. Prune: zero the smallest weights (masks kept for recovery), or drop the weakest MLP channels.
    pruned, masks = P.prune(model, cfg.method, cfg.sparsity)
    with ctx.timed("score_before"):
        em = on_a_cpu(ctx, _exact_match, pruned, tokenizer, test, cfg.measure)

    # 2. Recover: a short training run against the unpruned model, the zeros held.
    recovered = _train(pruned, tokenizer, source.uri, masks, cfg.recovery, _pairs(inputs, tokenizer, context_length(model)), ctx)
    recovered.save_pretrained(ctx.output_dir)
    tokenizer.save_pretrained(ctx.output_dir)
    if cfg.recovery.max_steps:
        plot_curves(ctx, keys=("loss", "kl", "ce"), ylabel="nats per token")
    metrics = _profiles(source.path, ctx.output_dir, test, cfg.measure, ctx, exact_match=True)
    removed = 1 - _block_weight_count(recovered) / _block_weight_count(model)  # channels: weights gone, not zeroed
    metrics.update(exact_match_before_recovery=em, sparsity=P.sparsity(recovered) if masks else removed)
    headline = f"{cfg.method} {metrics['sparsity']:.0%}: exact match {em:.1%} pruned, {metrics['exact_match']:.1%} recovered"
    return compressed_model(ctx, source_step, source, metrics, headline)


def _block_weight_count(model) -> int:
    return sum(m.weight.numel() for _, m in P.block_weights(model))
