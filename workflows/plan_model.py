"""A model's size for ``lifecycle plan``, read without weights: a parameter count, an HF
config.json, a YAML model block, or a workflow spec's pretrain step (built on the meta device).

Also ``PlanError``, the one-line bad-input error every ``plan`` module raises.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from components.core import memory

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_PARAMS_RE = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)
_MODEL_TYPE_KEYS = ("model_type", "type", "architecture", "arch")


class PlanError(ValueError):
    """Bad input for ``plan``; the message is one line for the terminal."""


def parse_param_count(text: str | None) -> int:
    """'1e9', '124M', '1.3B', '350k', '124_000_000', '7,000,000' -> an int; PlanError otherwise.

    Suffixes are decimal: K = 10^3, M = 10^6, B or G = 10^9, T = 10^12.
    """
    match = _PARAMS_RE.match(text or "")
    value = None
    if match:
        try:
            value = Decimal(match.group(1).replace("_", "").replace(",", "")) * _SUFFIX[match.group(2).lower()]
        except InvalidOperation:
            value = None
    if value is None or value < 1:
        raise PlanError(f"--params: cannot read {text!r} as a parameter count (use e.g. 1e9, 124M, 1.3B)")
    return int(value)


def load_model(path: str) -> tuple[memory.ModelSize, dict]:
    """Size a model from a file, plus defaults the file implies: ``({...}, {"batch", "seq"})``.

    * ``*.json``: a Hugging Face config.json (needs ``model_type``).
    * YAML workflow spec (has ``steps``): the ``uses: pretrain`` step's ``with.model`` block
      (this project's ``ModelConfig``, defaults when absent), built with ``build_causal_lm``
      at the tokenizer step's ``vocab_size``; its ``micro_batch_size`` and ``n_positions``
      become the default batch and seq.
    * Other YAML: a top-level ``model`` block, either HF config keys with ``model_type``
      (``type``/``arch`` accepted), ``config:`` naming a config.json (relative to the YAML)
      or an inline mapping, or a ``ModelConfig`` block (vocab from ``tokenizer.vocab_size``);
      or a whole document with ``model_type``.
    """
    file = Path(path)
    text = file.read_text()  # OSError -> exit 2 in run_plan
    if file.suffix.lower() == ".json":
        return memory.count_params_from_config(_hf_config(_parse_json(text, path), path)), {}
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(document, dict):
        raise PlanError(f"{path}: expected a mapping with a 'model' block")
    if isinstance(document.get("steps"), dict):
        return _from_spec(document, path)
    block = document.get("model")
    if block is None and any(k in document for k in _MODEL_TYPE_KEYS):
        block = document
    if not isinstance(block, dict):
        raise PlanError(f"{path}: no 'model' block (nor a top-level model_type) found")
    if "config" in block or any(k in block for k in ("model_type", "type", "arch")):
        inner = block.get("config")
        if isinstance(inner, str):
            inner_path = file.parent / inner
            return memory.count_params_from_config(_hf_config(_parse_json(inner_path.read_text(), inner_path), inner_path)), {}
        merged = {**{k: v for k, v in block.items() if k != "config"}, **(inner or {})}
        return memory.count_params_from_config(_hf_config(merged, path)), {}
    vocab = (document.get("tokenizer") or {}).get("vocab_size")
    return project_model(block, vocab, path)


def _from_spec(document: dict, path) -> tuple[memory.ModelSize, dict]:
    steps = {name: step for name, step in document["steps"].items() if isinstance(step, dict)}
    pretrain = next((s.get("with") or {} for s in steps.values() if s.get("uses") == "pretrain"), None)
    if pretrain is None:
        raise PlanError(f"{path}: the workflow has no 'uses: pretrain' step to plan")
    vocab = next(((s.get("with") or {}).get("vocab_size") for s in steps.values() if s.get("uses") == "tokenizer"), None)
    from pydantic import ValidationError

    from components.pretrain.config import PretrainConfig

    try:
        cfg = PretrainConfig.model_validate(pretrain)
    except ValidationError as e:
        first = e.errors()[0]
        raise PlanError(f"{path}: pretrain.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    size, hints = project_model(cfg.model.model_dump(), vocab, path)
    hints["batch"] = cfg.micro_batch_size  # what each worker trains on, default included
    return size, hints


def project_model(block: dict, vocab_size: int | None, path) -> tuple[memory.ModelSize, dict]:
    """Build this project's ``ModelConfig`` on the meta device, exactly as pretraining does."""
    import torch
    from pydantic import ValidationError

    from components.core.models import ModelConfig, build_causal_lm
    from components.data.config import TokenizerConfig

    try:
        cfg = ModelConfig.model_validate(block)
        tok = TokenizerConfig() if vocab_size is None else TokenizerConfig(vocab_size=vocab_size)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        owner = "tokenizer" if where == "vocab_size" else "model"
        raise PlanError(f"{path}: {owner}.{where}: {first['msg']}") from None
    vocab = tok.vocab_size
    with torch.device("meta"):
        model = build_causal_lm(cfg, vocab, 0, 0, 0)
    return memory.model_size(model, cfg.architecture), {"seq": cfg.n_positions}


def _parse_json(text: str, path) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from None


def _hf_config(block, path) -> dict:
    """The block as an HF config dict with ``model_type`` (aliases type/architecture/arch)."""
    if not isinstance(block, dict):
        raise PlanError(f"{path}: a model config is a mapping, got {type(block).__name__}")
    block = dict(block)
    for key in _MODEL_TYPE_KEYS:
        if block.get(key):
            return {**{k: v for k, v in block.items() if k not in _MODEL_TYPE_KEYS}, "model_type": str(block[key])}
    raise PlanError(f"{path}: the model config names no model_type (e.g. gpt2, llama)")


def spec_model(resolved, pretrain: str) -> tuple[memory.ModelSize, int, int]:
    """(size, context length, vocab) of a pretrain step's model, at its tokenizer step's vocab_size,
    or of a base step's checkpoint, from the config.json validation read (no weights loaded)."""
    cfg = resolved.configs[pretrain]
    if resolved.spec.steps[pretrain].uses == "base":
        from components.core.models import config_from_dict, context_length

        config = json.loads(cfg.resolved.config)
        size = memory.count_params_from_config(config)
        return size, context_length(config_from_dict(config)), int(config["vocab_size"])
    vocab = next((resolved.configs[n].vocab_size for n in resolved.spec.steps[pretrain].needs
                  if resolved.spec.steps[n].uses == "tokenizer"), None)
    size, hints = project_model(cfg.model.model_dump(), vocab, resolved.path)
    from components.data.config import TokenizerConfig

    return size, hints["seq"], vocab or TokenizerConfig().vocab_size
