"""Ray wiring of the finetune phase: tokenize, check, score the base, train (or sweep), export, score again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from components import tracking, training
from components.artifact import Artifact, StepContext
from components.core.chat import prompt_format
from components.core.models import auto_class, context_length, family_of, load_trained, weights_bytes
from components.core.peft_methods import trainable_parameters
from components.core.sft import encode_split
from components.data.corpus import read_jsonl
from components.data.instructions import read_examples_jsonl, spread
from components.data.tokenizer import tokenize_and_pack
from components.finetune.config import FinetuneConfig
from components.finetune.loop import build_model, train_loop
from components.report import plot_curves
from components.scoring import AnswerMemo, corpus_perplexity, exact_match_by_family, reuse_tags, text_scores_by_family
from components.sweep import run_sweep

REPLAY_BLOCK = 64  # tokens per replayed pretraining row


def run(cfg: FinetuneConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Instruction-tune the model input on the instructions input; returns the merged model (adapter in adapter/)."""
    base = next(a for a in inputs.values() if a.kind == "model")
    instructions_step, instructions = next((n, a) for n, a in inputs.items() if a.kind == "instructions")
    corpus_step, corpus = next((n, a) for n, a in inputs.items() if a.kind == "dataset")

    # 1. Check everything that can be wrong before any worker starts: the method fits this
    #    model (target modules exist), every example fits the context.
    model, tokenizer = build_model(str(base.path), cfg)
    trainable, total = trainable_parameters(model)
    context = min(context_length(model), cfg.max_length or context_length(model))
    seq2seq = family_of(model) == "seq2seq"
    if cfg.method == "prompt_tuning":
        context -= cfg.prompt_tuning.num_virtual_tokens
    if seq2seq and cfg.replay_fraction > 0:
        raise ValueError("field 'replay_fraction': replay of pretraining text is for causal models; a t5 model "
                         "(span-corruption pretrained) has no plain-text objective to replay; set it to 0")
    splits = {s: read_examples_jsonl(instructions.path / f"{s}.jsonl") for s in ("train", "validation", "test")}
    pairs = {s: encode_split(instructions.path / f"{s}.jsonl", examples, tokenizer, context, seq2seq)
             for s, examples in splits.items() if s != "test"}
    _log_inputs(ctx, instructions_step, instructions, corpus_step, corpus)
    _log_prompt_format(ctx, tokenizer, seq2seq)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / total})

    # 2. The base model's scores: what fine-tuning must beat, and the forgetting baseline.
    test = spread(splits["test"], cfg.test_examples)
    corpus_val = read_jsonl(corpus.path / "validation.jsonl")
    memo_before, memo_after = (AnswerMemo.of(key, ctx.storage_path, ctx.step) for key in (base.cache_key, ctx.cache_key))
    with ctx.timed("score_before"):
        base_model = auto_class(base.path).from_pretrained(base.path)
        if seq2seq:
            # Perplexity on plain text is a causal-LM measure (a T5 decoder never reads the corpus as
            # such), so there is no forgetting check; BLEU and ROUGE-L of the answers are logged instead.
            text_before = text_scores_by_family(base_model, tokenizer, test, cfg.max_new_tokens, memo_before)
            before = text_before["exact_match"]
        else:
            before = exact_match_by_family(base_model, tokenizer, test, cfg.max_new_tokens, memo_before)
            ppl_before = corpus_perplexity(base_model, tokenizer, corpus_val, context, cfg.eval_tokens)
    del base_model, model

    # 3. Train: one Ray Train run, or a Ray Tune sweep over LoRA rank whose best trial wins.
    replay = np.zeros((0, REPLAY_BLOCK), dtype=np.int32)
    if cfg.replay_fraction > 0:
        replay = tokenize_and_pack(read_jsonl(corpus.path / "train.jsonl"), tokenizer, REPLAY_BLOCK)
    loop_config = {"cfg": cfg.model_dump(), "train_pairs": pairs["train"], "val_pairs": pairs["validation"],
                   "replay_blocks": replay, "base_dir": base.uri}
    if cfg.sweep is None:
        export, best = training.fit(train_loop, loop_config, ctx, cfg.max_failures, ("step", "loss", "val_loss", "examples_per_s")), {}
    else:
        export, best = run_sweep(cfg, train_loop, loop_config, ctx)
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": best["r"], "alpha": best["alpha"]}), "lr": best["lr"]})
    shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
    if (export / "adapter").exists():
        shutil.copytree(export / "adapter", ctx.output_dir / "adapter")
    if (export / "trials").exists():  # a sweep's trial adapters, served side by side by the deploy step
        shutil.copytree(export / "trials", ctx.output_dir / "trials")
    shutil.rmtree(export)

    # 4. Score the result the way a user will load it.
    with ctx.timed("score_after"):
        tuned = load_trained(ctx.output_dir)
        if seq2seq:
            text_after = text_scores_by_family(tuned, tokenizer, test, cfg.max_new_tokens, memo_after)
            after = text_after["exact_match"]
        else:
            after = exact_match_by_family(tuned, tokenizer, test, cfg.max_new_tokens, memo_after)
            ppl_after = corpus_perplexity(tuned, tokenizer, corpus_val, context, cfg.eval_tokens)
    if seq2seq:
        quality = {f"{name}_{when}{'' if f == 'all' else '_' + f}": v
                   for when, scores in (("before", text_before), ("after", text_after))
                   for name in ("bleu", "sentence_bleu", "rougeL") for f, v in scores[name].items()}
    else:
        quality = {"corpus_ppl_before": ppl_before, "corpus_ppl_after": ppl_after, "forgetting_ppl_ratio": ppl_after / ppl_before}
    trainable, _ = trainable_parameters(build_model(str(base.path), cfg)[0])
    metrics = {
        "exact_match_before": before["all"], "exact_match_after": after["all"],
        **{f"exact_match_before_{f}": v for f, v in before.items() if f != "all"},
        **{f"exact_match_after_{f}": v for f, v in after.items() if f != "all"},
        **quality,
        "trainable_params": trainable, "trainable_share": trainable / total, **_sizes(ctx.output_dir),
        **{f"best_{k}": v for k, v in best.items()},
    }
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, reuse_tags(before=memo_before, after=memo_after))
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, {"before": before, "after": after}, "exact_match_by_family.json")
    if cfg.sweep is None:
        plot_curves(ctx)
    headline = f"exact match {before['all']:.0%} -> {after['all']:.0%}, {cfg.method} {trainable / total:.2%} params"
    if seq2seq:
        headline += (f", sentence BLEU {metrics['sentence_bleu_before']:.1f} -> {metrics['sentence_bleu_after']:.1f}, "
                     f"ROUGE-L {metrics['rougeL_before']:.2f} -> {metrics['rougeL_after']:.2f}")
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)


def _sizes(directory: Path) -> dict[str, float]:
    """Bytes of the adapter and of the model weights, and their ratio."""
    model_bytes, adapter_bytes = weights_bytes(directory), weights_bytes(directory / "adapter")
    sizes = {"model_bytes": float(model_bytes)}
    if adapter_bytes:
        sizes.update(adapter_bytes=float(adapter_bytes), adapter_share=adapter_bytes / model_bytes)
    return sizes


def _log_prompt_format(ctx: StepContext, tokenizer, seq2seq: bool) -> None:
    """Tag how prompts were shown to the model (core/chat.py); say so once when a causal model's tokenizer has no
    chat template, since a pretrained checkpoint is then tuned on the project's Alpaca format, not its own."""
    fmt = "alpaca (encoder-decoder)" if seq2seq else prompt_format(tokenizer)
    if fmt == "alpaca, no chat template":
        print(f"step '{ctx.step}': the model's tokenizer has no chat template; prompts keep the project's Alpaca format")
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.prompt_format": fmt})


def _log_inputs(ctx: StepContext, instructions_step: str, instructions: Artifact, corpus_step: str, corpus: Artifact) -> None:
    """The same dataset names and digests as the upstream steps logged, so lineage lines up."""
    for split in ("train", "validation", "test"):
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{instructions_step}/{split}",
                             str(instructions.metrics.get(f"digest_{split}", "")), instructions.uri, split,
                             {"examples": int(instructions.metrics.get(f"{split}_examples", 0))})
    tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{corpus_step}/validation",
                         str(corpus.metrics.get("digest_validation", "")), corpus.uri, "forgetting", {})
