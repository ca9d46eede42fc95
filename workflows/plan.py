"""``lifecycle plan``: how much device memory training needs, and which strategy to use.

No Ray and no cluster: pure arithmetic from ``components.core.memory``, so it answers in
seconds on a laptop before anything is launched::

    lifecycle plan --params 1B
    lifecycle plan --params 7B --precision bf16 --strategy fsdp --devices 8 --batch 4 --seq 2048
    lifecycle plan --model config.json --strategy deepspeed --stage 3 --devices 8 --json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from components.core import memory
from components.core.memory import GB, format_gb

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_PARAMS_RE = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$", re.IGNORECASE)
_MODEL_TYPE_KEYS = ("model_type", "type", "architecture", "arch")


class PlanError(ValueError):
    """Bad input for ``plan``; the message is one line for the terminal."""


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plan`` on an argparse subparsers object; returns its parser.

    Sets ``func=run_plan`` as the parser default so a dispatcher can call ``args.func(args)``.
    """
    p = subparsers.add_parser(
        "plan",
        help="estimate training memory per device and recommend DDP, FSDP or DeepSpeed",
        description=(
            "Estimate per-device training memory (weights, gradients, Adam states, activations) "
            "and recommend a strategy. GB are decimal (10^9 bytes)."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--params", metavar="N", help="parameter count: 1e9, 124M, 1.3B, 350K, 124000000")
    what.add_argument(
        "--model", metavar="CONFIG",
        help="a Hugging Face config.json, a workflow spec (plans its pretrain step's model), "
             "or a YAML file with a 'model' block",
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="training precision; bf16/fp16 mean mixed precision with fp32 Adam (default fp32)")
    p.add_argument("--strategy", default="ddp", choices=list(memory.STRATEGIES), help="default ddp")
    p.add_argument("--stage", type=int, choices=[0, 1, 2, 3], help="ZeRO stage for deepspeed (default 2)")
    p.add_argument("--devices", type=int, default=1, help="GPUs training together, on one node (default 1)")
    p.add_argument("--batch", type=int, help="micro-batch per device (default 1)")
    p.add_argument("--seq", type=int, help="sequence length in tokens (default 1024)")
    p.add_argument("--layers", type=int, help="transformer layers, with --params (else guessed)")
    p.add_argument("--hidden", type=int, help="hidden size, with --params (else guessed)")
    p.add_argument("--cpu-offload", action="store_true", help="offload to CPU (fsdp, or deepspeed stage >= 1)")
    p.add_argument("--device-memory", type=float, default=memory.DEFAULT_DEVICE_MEMORY_BYTES / GB, metavar="GB",
                   help="memory of one device in decimal GB (default 80)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan for parsed ``args``; 0 on success, 2 (one line on stderr) on bad input."""
    try:
        plan = build_plan(args)
    except (PlanError, ValueError, OSError) as e:
        message = " ".join(str(e).split())  # one line, whatever the underlying error looked like
        print(f"lifecycle plan: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print_plan(plan)
    return 0


def build_plan(args: argparse.Namespace) -> dict:
    """The plan as a JSON-ready dict: inputs, per-device bytes and GB, storage, rule of thumb, recommendation."""
    model, hints = None, {}
    n_layers, hidden, largest = args.layers, args.hidden, None
    if args.model:
        if args.layers or args.hidden:
            raise PlanError("--layers/--hidden go with --params; --model reads them from the config")
        size, hints = load_model(args.model)
        n_params, n_layers, hidden, largest = size.n_params, size.n_layers, size.hidden, size.largest_layer_params
        model = {"path": str(args.model), "model_type": size.model_type, "n_params": size.n_params,
                 "n_layers": size.n_layers, "hidden": size.hidden, "largest_layer_params": largest}
    else:
        n_params = parse_param_count(args.params)
    if args.devices < 1:
        raise PlanError(f"--devices must be >= 1, got {args.devices}")
    if args.device_memory <= 0:
        raise PlanError(f"--device-memory must be positive, got {args.device_memory:g}")
    batch = args.batch if args.batch is not None else hints.get("batch")
    seq = args.seq if args.seq is not None else hints.get("seq")
    est = memory.estimate(
        n_params, args.precision, args.strategy, args.stage, args.devices, batch, seq,
        n_layers, hidden, args.cpu_offload,
        largest_layer_params=largest, device_memory_bytes=int(args.device_memory * GB),
    )
    parts = {
        "weights": est.weights,
        "gradients": est.gradients,
        "optimizer_states": est.optimizer_states,
        "activations": est.activations,
        "total": est.total,
    }
    storage = memory.storage_table(n_params)
    return {
        "inputs": {
            "n_params": est.n_params, "precision": est.precision, "strategy": est.strategy, "stage": est.stage,
            "devices": est.devices, "cpu_offload": est.cpu_offload, "device_memory_gb": est.device_memory_bytes / GB,
            **est.shape,
        },
        "model": model,
        "per_device_bytes": parts,
        "per_device_gb": {k: round(v / GB, 6) for k, v in parts.items()},
        "cpu_bytes": est.cpu_bytes,
        "fits": est.fits,
        "accounting": est.accounting,
        "activations_method": est.activations_method,
        "storage_bytes": storage,
        "storage_gb": {k: v / GB for k, v in storage.items()},
        "doc_rule_of_thumb": {
            "bytes_per_param": dict(memory.DOC_TRAINING_BREAKDOWN_FP32),
            "breakdown_bytes_per_param": memory.doc_training_bytes_per_param(),
            "breakdown_gb": memory.doc_training_bytes_by_breakdown(n_params) / GB,
            "headline_multiplier": memory.DOC_MULTIPLIER,
            "headline_gb": memory.doc_training_bytes_headline(n_params) / GB,
            "explanation": memory.rule_of_thumb_explanation(n_params),
        },
        "recommendation": {
            "strategy": est.recommendation.strategy,
            "stage": est.recommendation.stage,
            "cpu_offload": est.recommendation.cpu_offload,
            "per_device_bytes": est.recommendation.per_device_bytes,
            "reason": est.recommendation.reason,
        },
    }


def print_plan(plan: dict) -> None:
    """Render ``build_plan``'s dict as a rich table plus a few lines of context."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    i = plan["inputs"]
    setup = _setup_name(i["strategy"], i["stage"], i["cpu_offload"])
    title = (f"{_count(i['n_params'])} params, {i['precision']}, {setup}, "
             f"{i['devices']} device{'s' if i['devices'] > 1 else ''} x {i['device_memory_gb']:g} GB")
    console.print(f"Training memory per device: {title}", markup=False, style="bold")
    table = Table()
    table.add_column("component")
    table.add_column("GB", justify="right")
    b = plan["per_device_bytes"]
    for key, label in (("weights", "weights"), ("gradients", "gradients"),
                       ("optimizer_states", "optimizer states"), ("activations", "activations")):
        table.add_row(label, _cell(b[key]))
    table.add_row("total", _cell(b["total"]), style="bold")
    if plan["cpu_bytes"]:
        table.add_row("host RAM (node)", _cell(plan["cpu_bytes"]), style="dim")
    console.print(table)

    def line(label, text):
        console.print(f"{label}: {text}", markup=False)

    line("Fits", f"{'yes' if plan['fits'] else 'NO'} ({format_gb(b['total'])} GB of {i['device_memory_gb']:g} GB)")
    line("Model states", plan["accounting"])
    line("Activations", plan["activations_method"])
    s = {k: format_gb(v) for k, v in plan["storage_bytes"].items()}
    line("Storage (weights only)", f"fp32 {s['fp32']} GB | 16-bit {s['16-bit']} GB | 8-bit {s['8-bit']} GB")
    doc = plan["doc_rule_of_thumb"]
    line("Source rule of thumb (fp32)",
         f"breakdown {doc['breakdown_bytes_per_param']} bytes/param -> {format_gb(doc['breakdown_gb'] * GB)} GB; "
         f"\"~{doc['headline_multiplier']}x\" headline -> {format_gb(doc['headline_gb'] * GB)} GB")
    console.print(doc["explanation"], markup=False, style="dim")
    r = plan["recommendation"]
    line("Recommendation", r["reason"])


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
    return _project_model(block, vocab, path)


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
    size, hints = _project_model(cfg.model.model_dump(), vocab, path)
    hints["batch"] = cfg.micro_batch_size  # what each worker trains on, default included
    return size, hints


def _project_model(block: dict, vocab_size: int | None, path) -> tuple[memory.ModelSize, dict]:
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


def _setup_name(strategy: str, stage: int | None, offload: bool) -> str:
    name = {"ddp": "DDP", "fsdp": "FSDP (full shard)", "deepspeed": f"DeepSpeed ZeRO stage {stage}"}[strategy]
    return name + (" + CPU offload" if offload else "")


def _cell(n_bytes: int) -> str:
    # Fixed two decimals line the column up; tiny models keep significant digits instead of 0.00.
    return f"{n_bytes / GB:.2f}" if n_bytes >= 0.1 * GB or n_bytes == 0 else format_gb(n_bytes)


def _count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
