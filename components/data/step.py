"""Ray-side wiring of the data phases: corpus, tokenizer, instructions, preferences (all small: they run in the step task)."""

from __future__ import annotations

import json
from pathlib import Path

from components import tracking
from components.artifact import Artifact, StepContext
from components.data.config import DataConfig, TokenizerConfig
from components.data.corpus import documents_digest, load_documents, read_jsonl, split_by_hash, write_jsonl
from components.data.instructions import (
    InstructionDataConfig,
    load_examples,
    mix_by_weights,
    read_examples_jsonl,
    split_examples,
    write_examples_jsonl,
)
from components.data.preferences import (
    PreferenceDataConfig,
    derive_pairs,
    load_preferences,
    split_pairs,
    write_pairs_jsonl,
)


def check_data(cfg: DataConfig, workdir: Path | None = None) -> DataConfig:
    """Preflight before Ray starts: a local source must load cleanly; returns it with an absolute path.

    Raises DataError naming the file and line. Hub sources are checked when the step runs.
    """
    if cfg.source == "python-docs" or cfg.source.startswith("hf:"):
        return cfg
    cfg = cfg.model_copy(update={"source": str(Path(cfg.source).expanduser().resolve())})
    load_documents(cfg)
    return cfg


def run_data(cfg: DataConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Load the corpus, split it by seeded hash, write train/validation JSONL; log both as datasets."""
    docs = load_documents(cfg)
    train, validation = split_by_hash(docs, cfg.validation_fraction, cfg.seed)
    metrics: dict[str, float | str] = {}
    for split, part in (("train", train), ("validation", validation)):
        write_jsonl(ctx.output_dir / f"{split}.jsonl", part)
        digest = documents_digest(part)
        profile = {"documents": len(part), "characters": sum(map(len, part))}
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{ctx.step}/{split}", digest, cfg.source, split, profile)
        metrics[f"digest_{split}"] = digest
        metrics[f"{split}_documents"] = len(part)
        metrics[f"{split}_characters"] = profile["characters"]
    (ctx.output_dir / "dataset.json").write_text(json.dumps({"source": cfg.source, **metrics}, indent=1))
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    headline = f"{len(train)} train / {len(validation)} val docs"
    return Artifact(str(ctx.output_dir), "dataset", ctx.run_id, ctx.cache_key, metrics, headline)


def run_tokenizer(cfg: TokenizerConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Train a byte-level BPE on the training split; save it in Hugging Face format."""
    # Deferred: transformers takes seconds to import, and `lifecycle validate` imports this module for its checks.
    from components.data.tokenizer import train_bpe

    ((dataset_step, dataset),) = inputs.items()
    docs = read_jsonl(dataset.path / "train.jsonl")
    tokenizer = train_bpe(docs, cfg)
    tokenizer.save_pretrained(ctx.output_dir)
    sample = docs[: min(len(docs), 200)]
    chars = sum(map(len, sample))
    tokens = sum(len(tokenizer(d)["input_ids"]) for d in sample)
    metrics = {"vocab_size": float(len(tokenizer)), "chars_per_token": chars / max(tokens, 1)}
    tracking.log_dataset(
        ctx.tracking_uri, ctx.run_id, f"{dataset_step}/train", str(dataset.metrics.get("digest_train", "")),
        dataset.uri, "train", {"documents": len(docs)},
    )
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    headline = f"vocab {len(tokenizer)}, {metrics['chars_per_token']:.2f} chars/token"
    return Artifact(str(ctx.output_dir), "tokenizer", ctx.run_id, ctx.cache_key, metrics, headline)


def check_instructions(cfg: InstructionDataConfig, workdir: Path | None = None) -> InstructionDataConfig:
    """Preflight before Ray starts: a file source must parse (errors name file:line); path made absolute."""
    if cfg.source == "bundled":
        return cfg
    cfg = cfg.model_copy(update={"source": str(Path(cfg.source).expanduser().resolve())})
    load_examples(cfg)
    return cfg


def run_instructions(cfg: InstructionDataConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Generate or load instruction examples; split train/validation/test by seeded hash; mix train by weights."""
    splits = split_examples(load_examples(cfg), cfg.seed, cfg.validation_fraction, cfg.test_fraction)
    if cfg.weights is not None:
        by_family: dict[str, list] = {}
        for e in splits["train"]:
            by_family.setdefault(e.family, []).append(e)
        splits["train"] = mix_by_weights(by_family, cfg.weights, len(splits["train"]), cfg.seed)
    metrics: dict[str, float | str] = {}
    for split, examples in splits.items():
        if not examples:
            raise ValueError(f"{cfg.source}: the {split} split is empty; give more examples or a larger fraction")
        path = ctx.output_dir / f"{split}.jsonl"
        write_examples_jsonl(path, examples)
        families = sorted({e.family for e in examples})
        digest = documents_digest([e.prompt + "\x00" + e.response for e in examples])
        profile = {"examples": len(examples), "families": len(families)}
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{ctx.step}/{split}", digest, cfg.source, split, profile)
        metrics[f"digest_{split}"] = digest
        metrics[f"{split}_examples"] = len(examples)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {k: v for k, v in metrics.items() if not k.startswith("digest")})
    headline = f"{metrics['train_examples']} train / {metrics['validation_examples']} val / {metrics['test_examples']} test"
    return Artifact(str(ctx.output_dir), "instructions", ctx.run_id, ctx.cache_key, metrics, headline)


def check_preferences(cfg: PreferenceDataConfig, workdir: Path | None = None) -> PreferenceDataConfig:
    """Preflight before Ray starts: a file source must load (errors name file:line); path made absolute."""
    if cfg.source == "bundled":
        return cfg
    cfg = cfg.model_copy(update={"source": str(Path(cfg.source).expanduser().resolve())})
    load_preferences(cfg.source, cfg.on_bad)
    return cfg


def run_preferences(cfg: PreferenceDataConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Derive pairs from the instruction splits (bundled) or load a file and split it; write train/test JSONL."""
    skipped = {"missing_or_empty": 0, "identical": 0}
    if cfg.source == "bundled":
        instructions = next((a for a in inputs.values() if a.kind == "instructions"), None)
        if instructions is None:
            raise ValueError("preferences: source 'bundled' derives pairs from instructions; add an instructions step to `needs`")
        splits = {s: derive_pairs(read_examples_jsonl(instructions.path / f"{s}.jsonl"), cfg.seed, cfg.mix)
                  for s in ("train", "test")}
    else:
        pairs, skipped = load_preferences(cfg.source, cfg.on_bad)
        splits = split_pairs(pairs, cfg.test_fraction, cfg.seed)
    metrics: dict[str, float | str] = {f"skipped_{k}": v for k, v in skipped.items()}
    for split, pairs in splits.items():
        write_pairs_jsonl(ctx.output_dir / f"{split}.jsonl", pairs)
        digest = documents_digest([f"{p.prompt}\x00{p.chosen}\x00{p.rejected}" for p in pairs])
        kinds = {k: sum(p.kind == k for p in pairs) for k in sorted({p.kind for p in pairs})}
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{ctx.step}/{split}", digest, cfg.source, split,
                             {"pairs": len(pairs), **{f"kind_{k}": n for k, n in kinds.items() if k}})
        metrics[f"digest_{split}"] = digest
        metrics[f"{split}_pairs"] = len(pairs)
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {k: v for k, v in metrics.items() if not k.startswith("digest")})
    headline = f"{metrics['train_pairs']} train / {metrics['test_pairs']} test pairs"
    if sum(skipped.values()):
        headline += f", {sum(skipped.values())} skipped"
    return Artifact(str(ctx.output_dir), "preferences", ctx.run_id, ctx.cache_key, metrics, headline)
