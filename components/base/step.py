"""Ray wiring of the base phase: find the checkpoint, load it as safetensors, save it as the step's model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components import tracking
from components.artifact import Artifact, StepContext
from components.base.config import BaseConfig
from components.base.source import check_folder, file_digests, hub_folder, registry_folder, resolve
from components.core.models import auto_class, count_parameters

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def check(cfg: BaseConfig, workdir: Path) -> BaseConfig:
    """Before Ray starts: the source exists, is a safetensors checkpoint with a tokenizer; pinned (components/base/source.py)."""
    return resolve(cfg, workdir)


def run(cfg: BaseConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Load the checkpoint (safetensors only; remote code only if the spec allows it) and save it,
    with its tokenizer and generation config, as this step's model."""
    facts = cfg.resolved or resolve(cfg, ctx.workdir).resolved  # a config made without the validator
    if cfg.source.startswith("hf:"):
        folder = hub_folder(cfg.source, facts.revision, ctx.workdir)
    elif cfg.source.startswith("models:/"):
        folder, _ = registry_folder(cfg.source, ctx.tracking_uri)
    else:
        folder = Path(cfg.source)
    check_folder(folder, cfg.source)  # again: the folder may have changed since validation

    with ctx.timed("load"):
        model = auto_class(folder).from_pretrained(
            folder, dtype=DTYPES[cfg.dtype], use_safetensors=True, trust_remote_code=cfg.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    notes = _fill_pad_token(model, tokenizer)
    if not tokenizer.chat_template:
        notes.append("no chat template: the lifecycle formats prompts its own way (### Instruction / ### Response)")
    with ctx.timed("save"):
        model.save_pretrained(ctx.output_dir, safe_serialization=True)
        tokenizer.save_pretrained(ctx.output_dir)

    parameters = count_parameters(model)
    record = {
        "source": cfg.source, "revision": facts.revision, "architecture": facts.architecture, "model_type": facts.model_type,
        "family": facts.family, "parameters": parameters, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "weights_sha256": file_digests(folder), "notes": notes,
    }
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, record, "base_source.json")
    # An hf: source as the commit its revision (a branch, a tag, or none: main) resolved to.
    pinned = f"{cfg.source.partition('@')[0]}@{facts.revision}" if cfg.source.startswith("hf:") else cfg.source
    # One digest over every weight file's digest: what `lifecycle lineage` shows beside the source.
    weights = hashlib.sha256(json.dumps(record["weights_sha256"], sort_keys=True).encode()).hexdigest()
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.base_source": pinned, "lifecycle.base_revision": facts.revision,
                                                     "lifecycle.base_weights": weights})
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"parameters": float(parameters)})
    for note in notes:
        print(f"[{ctx.step}] {note}", flush=True)
    shown = pinned.rpartition("@")[0] + "@" + facts.revision[:12] if cfg.source.startswith("hf:") else cfg.source
    headline = f"{facts.architecture or facts.model_type} {parameters / 1e6:.1f}M params from {shown}"
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key,
                    {"parameters": float(parameters), "source": pinned}, headline)


def _fill_pad_token(model, tokenizer) -> list[str]:
    """Batches need a pad token; many causal checkpoints (Llama, GPT-2) ship none: use eos, as is usual."""
    if tokenizer.pad_token is not None:
        return []
    if tokenizer.eos_token is None:
        raise ValueError("field 'source': the tokenizer has neither a pad nor an eos token; add one before bringing it in")
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return [f"no pad token: padding with eos ({tokenizer.eos_token!r})"]
