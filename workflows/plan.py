"""``lifecycle plan``: how much device memory training needs, and which strategy to use.

No Ray and no cluster: pure arithmetic from ``components.core.memory``, so it answers in
seconds on a laptop before anything is launched::

    lifecycle plan --params 1B
    lifecycle plan --params 7B --precision bf16 --strategy fsdp --devices 8 --batch 4 --seq 2048
    lifecycle plan --model config.json --strategy deepspeed --stage 3 --devices 8 --json
    lifecycle plan --spec workflows/gpt2-124m.yaml --gpus 8 --gpu-memory 80
    lifecycle plan --spec workflows/gpt2-124m.yaml pretrain.micro_batch_size=32 --address HEAD:6379

``--spec`` plans every training step of a workflow at the spec's scale and compares it with
the GPUs at hand; it connects to Ray only when ``--address`` is given, and never starts one.
"""

from __future__ import annotations

import argparse
import json
import math
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
    what.add_argument(
        "--spec", metavar="SPEC",
        help="a workflow spec: plan every training step at the spec's scale and strategy, and check "
             "that it fits the GPUs (--gpus, --gpu-memory, --address); exit 1 if a step does not fit",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="with --spec: overrides as for `lifecycle run`, e.g. pretrain.micro_batch_size=8 scale.workers=4")
    # The per-model flags default to None so that --spec can tell they were given and refuse them.
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="training precision; bf16/fp16 mean mixed precision with fp32 Adam (default fp32)")
    p.add_argument("--strategy", choices=list(memory.STRATEGIES), help="default ddp")
    p.add_argument("--stage", type=int, choices=[0, 1, 2, 3], help="ZeRO stage for deepspeed (default 2)")
    p.add_argument("--devices", type=int, help="GPUs training together, on one node (default 1)")
    p.add_argument("--batch", type=int, help="micro-batch per device (default 1)")
    p.add_argument("--seq", type=int, help="sequence length in tokens (default 1024)")
    p.add_argument("--layers", type=int, help="transformer layers, with --params (else guessed)")
    p.add_argument("--hidden", type=int, help="hidden size, with --params (else guessed)")
    p.add_argument("--cpu-offload", action="store_true", help="offload to CPU (fsdp, or deepspeed stage >= 1)")
    p.add_argument("--device-memory", "--gpu-memory", dest="device_memory", type=float,
                   default=memory.DEFAULT_DEVICE_MEMORY_BYTES / GB, metavar="GB",
                   help="memory of one device (GPU) in decimal GB (default 80)")
    p.add_argument("--gpus", type=int, metavar="N", help="with --spec: GPUs in the cluster, in all")
    p.add_argument("--address", metavar="ADDR",
                   help="with --spec: a running Ray cluster (http://HEAD:8265, HOST:6379, ray://HOST:10001, auto) "
                        "whose GPUs and CPUs to check against; never starts a local Ray")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.set_defaults(func=run_plan)
    return p


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan for parsed ``args``.

    0: planned (with --spec: every training step fits); 1 (--spec only): a step does not fit
    its GPUs or the cluster has too few; 2 (one line on stderr): bad input.
    """
    try:
        plan = build_spec_plan(args) if getattr(args, "spec", None) else build_plan(args)
    except (PlanError, ValueError, OSError) as e:
        message = " ".join(str(e).split())  # one line, whatever the underlying error looked like
        print(f"lifecycle plan: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=2))
    elif "steps" in plan:
        print_spec_plan(plan)
    else:
        print_plan(plan)
    return 1 if plan.get("problems") else 0


def build_plan(args: argparse.Namespace) -> dict:
    """The plan as a JSON-ready dict: inputs, per-device bytes and GB, storage, rule of thumb, recommendation."""
    given = {"KEY=VALUE overrides": bool(getattr(args, "overrides", None)), "--gpus": getattr(args, "gpus", None) is not None,
             "--address": bool(getattr(args, "address", None))}
    for flag in (flag for flag, on in given.items() if on):
        raise PlanError(f"{flag}: only with --spec (with --params or --model, use --devices and --device-memory)")
    precision = args.precision or "fp32"
    strategy = args.strategy or "ddp"
    devices = 1 if args.devices is None else args.devices
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
    if devices < 1:
        raise PlanError(f"--devices must be >= 1, got {devices}")
    if args.device_memory <= 0:
        raise PlanError(f"--device-memory must be positive, got {args.device_memory:g}")
    batch = args.batch if args.batch is not None else hints.get("batch")
    seq = args.seq if args.seq is not None else hints.get("seq")
    est = memory.estimate(
        n_params, precision, strategy, args.stage, devices, batch, seq,
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


# --- a workflow spec: every training step at the spec's scale ------------------------------------

# Phases whose steps train with Ray Train on the spec's scale.workers. PPO's four role actors
# are placed by ppo.gpus_per_role instead: they get a row without an estimate.
RAY_TRAIN_PHASES = ("pretrain", "finetune", "reward", "dpo", "distill", "prune")
# --params/--model flags that a spec sets itself; with --spec they are refused, not ignored.
_MODEL_FLAGS = {"--precision": "precision", "--strategy": "strategy", "--stage": "stage", "--devices": "devices",
                "--batch": "batch", "--seq": "seq", "--layers": "layers", "--hidden": "hidden", "--cpu-offload": "cpu_offload"}
_FP32_BYTES = 4


def build_spec_plan(args: argparse.Namespace) -> dict:
    """Plan every training step of ``args.spec`` (plus ``args.overrides``) at the spec's scale.

    Each step is estimated with ``memory.estimate`` for its own strategy, ZeRO stage, offload and
    precision, ``scale.workers`` devices, its micro-batch and the model's context length; the model
    is the upstream pretrain step's (followed through ``needs``). Returns a JSON-ready dict: spec,
    scale, cluster (GPUs and CPUs, or None when not checked), one entry per training step, and
    ``problems``: one line per step that does not fit a GPU or resource the cluster lacks (empty:
    everything fits). Bytes are bytes; GB are decimal (10^9 bytes). PlanError/SpecError: bad input.
    """
    from workflows.spec import SpecError, load_spec

    for flag, dest in _MODEL_FLAGS.items():
        if getattr(args, dest, None) not in (None, False):
            raise PlanError(f"{flag} does not go with --spec: the spec sets it; override the spec instead "
                            "(e.g. pretrain.strategy=ddp, pretrain.micro_batch_size=8, scale.workers=4)")
    if args.device_memory <= 0:
        raise PlanError(f"--gpu-memory must be positive, got {args.device_memory:g}")
    if args.gpus is not None and args.gpus < 0:
        raise PlanError(f"--gpus must be >= 0, got {args.gpus}")
    if args.gpus is not None and args.address:
        raise PlanError("give --gpus or --address, not both")
    try:
        resolved = load_spec(args.spec, args.overrides)
    except SpecError as e:
        message = str(e)  # override syntax errors do not name the file; everything else does
        raise PlanError(message if str(args.spec) in message else f"{args.spec}: {message}") from None

    scale = resolved.spec.scale
    on_gpu = scale.gpus_per_worker > 0
    memory_bytes = int(args.device_memory * GB)
    cluster = {"gpus": args.gpus, "cpus": None, "source": "--gpus" if args.gpus is not None else None}
    if args.address:
        cluster = {**cluster_resources(args.address), "source": f"--address {args.address}"}

    models: dict[str, tuple] = {}  # pretrain step -> (ModelSize, context length, vocab), built once each
    steps = []
    for name in resolved.order:
        uses = resolved.spec.steps[name].uses
        if uses == "ppo":
            steps.append({"step": name, "phase": uses, "planned": False,
                          "notes": ["four role actors (policy, reference, reward, value), each on ppo.gpus_per_role "
                                    "GPUs, not Ray Train workers: not estimated"]})
            continue
        if uses not in RAY_TRAIN_PHASES:
            continue
        setup = training_setup(uses, resolved.configs[name], on_gpu)
        if setup is None:
            continue
        source = upstream_pretrain(resolved, name)
        if source not in models:
            models[source] = _spec_model(resolved, source)
        steps.append(plan_step(name, uses, setup, *models[source], source, scale, memory_bytes))

    problems = [s["problem"] for s in steps if s.get("problem")]
    needed = [s for s in steps if s.get("planned")]
    if on_gpu and cluster["gpus"] is not None and needed:
        worst = max(needed, key=lambda s: s["gpus_needed"])
        if cluster["gpus"] < worst["gpus_needed"]:
            problems.append(
                f"too few GPUs: the cluster has {cluster['gpus']:g}, step '{worst['step']}' needs {worst['gpus_needed']} "
                f"(scale.workers {scale.workers} x scale.gpus_per_worker {scale.gpus_per_worker:g}"
                + (f" x {worst['trials']} concurrent sweep trials" if worst["trials"] > 1 else "") + ")")
    if cluster["cpus"] is not None and needed:
        worst = max(needed, key=lambda s: s["cpus_needed"])
        if cluster["cpus"] < worst["cpus_needed"]:
            problems.append(f"too few CPUs: the cluster has {cluster['cpus']:g}, step '{worst['step']}' needs "
                            f"{worst['cpus_needed']:g} (scale.workers {scale.workers} x scale.cpus_per_worker {scale.cpus_per_worker:g})")
    return {
        "spec": {"path": str(args.spec), "name": resolved.spec.name, "overrides": list(args.overrides)},
        "scale": scale.model_dump(),
        "on_gpu": on_gpu,
        "gpu_memory_gb": args.device_memory,
        "cluster": cluster,
        "steps": steps,
        "problems": problems,
        "fits": not problems,
    }


def training_setup(uses: str, cfg, on_gpu: bool) -> dict | None:
    """How a step of phase ``uses`` trains, read from its config; None if it trains nothing.

    Keys: strategy, stage (ZeRO stage, deepspeed only), cpu_offload, precision (what the loop
    really uses: only pretrain has mixed precision), batch (sequences per worker per forward pass
    kept for backward), frozen_copies (whole fp32 models each worker holds beside the trained one),
    trials (Ray Train runs at once), notes (why a figure is an upper bound).
    """
    notes: list[str] = []
    padded = "sequences at the full context (upper bound: a batch pads to its longest example)"
    setup = {"stage": None, "cpu_offload": False, "precision": "fp32", "frozen_copies": 0, "trials": 1}
    if uses == "pretrain":
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if on_gpu else "fp32")
        checkpointing = cfg.activation_checkpointing == "on" or (cfg.activation_checkpointing == "auto" and on_gpu)
        if checkpointing:
            notes.append("activations counted as if kept, but checkpointing is on (upper bound)")
        setup.update(strategy=cfg.strategy, precision=precision, batch=cfg.micro_batch_size,
                     stage=cfg.zero_stage if cfg.strategy == "deepspeed" else None,
                     cpu_offload=cfg.cpu_offload and cfg.strategy == "deepspeed")  # FSDP ignores cpu_offload
    elif uses == "finetune":
        if cfg.method != "full":
            notes.append(f"{cfg.method} counted as training every weight (upper bound)")
        notes.append(padded)
        setup.update(strategy=cfg.strategy, batch=cfg.micro_batch_size,
                     stage=cfg.zero_stage if cfg.strategy == "deepspeed" else None,
                     trials=cfg.sweep.max_concurrent_trials if cfg.sweep else 1)
    elif uses in ("reward", "dpo"):
        # Chosen and rejected answers both go forward and are both kept for the backward pass.
        frozen = 1 if uses == "dpo" and cfg.method == "full" else 0  # a LoRA policy's reference is itself, adapter off
        notes.append(f"pairs: chosen + rejected = 2 x {cfg.micro_batch_size} sequences")
        if uses == "dpo" and cfg.method == "lora":
            notes.append("lora counted as training every weight (upper bound)")
        if frozen:
            notes.append("+ the frozen fp32 reference")
        notes.append(padded)
        setup.update(strategy=cfg.strategy, batch=2 * cfg.micro_batch_size, frozen_copies=frozen,
                     stage=cfg.zero_stage if cfg.strategy == "deepspeed" else None)
    elif uses in ("distill", "prune"):
        training = cfg.training if uses == "distill" else cfg.recovery
        if training.max_steps == 0:
            return None
        frozen = 1 if training.alpha > 0 else 0  # the teacher, whole on every worker
        notes.append("student counted at the teacher's size (upper bound)" + ("; + the frozen fp32 teacher" if frozen else ""))
        notes.append(padded)
        setup.update(strategy=training.strategy, batch=training.micro_batch_size, frozen_copies=frozen)
    else:
        raise PlanError(f"phase {uses!r} is not a Ray Train phase")
    setup["notes"] = notes
    return setup


def upstream_pretrain(resolved, name: str) -> str:
    """The pretrain step whose model ``name`` trains: itself, or the first one up its ``needs``
    through steps that produce a model (finetune -> pretrain, reward -> finetune -> pretrain)."""
    from workflows.phases import PHASES

    seen, todo = set(), [name]
    while todo:
        step = todo.pop(0)
        if step in seen:
            continue
        seen.add(step)
        spec = resolved.spec.steps[step]
        if spec.uses == "pretrain":
            return step
        todo += [n for n in spec.needs if PHASES[resolved.spec.steps[n].uses].produces in ("model", "reward_model")]
    raise PlanError(f"{resolved.path}: step '{name}' trains a model that no pretrain step upstream builds")


def _spec_model(resolved, pretrain: str) -> tuple[memory.ModelSize, int, int]:
    """(size, context length, vocab) of a pretrain step's model, at its tokenizer step's vocab_size."""
    cfg = resolved.configs[pretrain]
    vocab = next((resolved.configs[n].vocab_size for n in resolved.spec.steps[pretrain].needs
                  if resolved.spec.steps[n].uses == "tokenizer"), None)
    size, hints = _project_model(cfg.model.model_dump(), vocab, resolved.path)
    from components.data.config import TokenizerConfig

    return size, hints["seq"], vocab or TokenizerConfig().vocab_size


def plan_step(name: str, uses: str, setup: dict, size: memory.ModelSize, seq: int, vocab: int, source: str,
              scale, memory_bytes: int) -> dict:
    """One step's estimate at the spec's scale: bytes per worker and per GPU, fit, recommendation."""
    on_gpu = scale.gpus_per_worker > 0
    est = memory.estimate(
        size.n_params, setup["precision"], setup["strategy"], setup["stage"], scale.workers, setup["batch"], seq,
        size.n_layers, size.hidden, setup["cpu_offload"],
        largest_layer_params=size.largest_layer_params, device_memory_bytes=memory_bytes,
    )
    frozen = setup["frozen_copies"] * size.n_params * _FP32_BYTES
    per_worker = est.total + frozen
    # Workers with a fraction of a GPU share it (0.5: two per GPU); one worker uses one device.
    sharing = max(1, math.floor(1 / scale.gpus_per_worker)) if 0 < scale.gpus_per_worker < 1 else 1
    per_gpu = per_worker * sharing
    fits = per_gpu <= memory_bytes if on_gpu else None
    notes = list(setup["notes"])
    logits = setup["batch"] * seq * vocab * _FP32_BYTES
    if logits >= 0.1 * per_worker:
        notes.append(f"not counted: the logits, {format_gb(logits)} GB per fp32 copy ({setup['batch']} x {seq} x vocab {vocab})")
    if sharing > 1:
        notes.append(f"{sharing} workers share each GPU (scale.gpus_per_worker {scale.gpus_per_worker:g})")
    rec = est.recommendation
    problem = None
    if fits is False:
        # The recommender's reason already starts "Does not fit: ..." when nothing fits.
        advice = f"Recommended: {rec.reason}" if rec.per_device_bytes <= memory_bytes else rec.reason
        problem = (f"step '{name}' ({uses}, {_short_setup(est.strategy, est.stage, est.cpu_offload)}) needs "
                   f"{format_gb(per_gpu)} GB per GPU > {format_gb(memory_bytes)} GB. {advice}")
    return {
        "step": name, "phase": uses, "planned": True, "model_from": source,
        "n_params": size.n_params, "n_layers": size.n_layers, "hidden": size.hidden, "vocab": vocab,
        "strategy": est.strategy, "stage": est.stage, "cpu_offload": est.cpu_offload, "precision": est.precision,
        "devices": scale.workers, "micro_batch": setup["batch"], "seq": seq, "trials": setup["trials"],
        "per_device_bytes": {"weights": est.weights, "gradients": est.gradients, "optimizer_states": est.optimizer_states,
                             "activations": est.activations, "frozen_models": frozen, "total": per_worker},
        "per_gpu_bytes": per_gpu if on_gpu else None,
        "cpu_bytes": est.cpu_bytes,
        "fits": fits,
        "gpus_needed": math.ceil(scale.workers * scale.gpus_per_worker * setup["trials"]),
        "cpus_needed": scale.workers * scale.cpus_per_worker * setup["trials"],
        "recommendation": {"strategy": rec.strategy, "stage": rec.stage, "cpu_offload": rec.cpu_offload,
                           "per_device_bytes": rec.per_device_bytes, "reason": rec.reason},
        "notes": notes,
        "problem": problem,
    }


def cluster_resources(address: str) -> dict:
    """``{"gpus": n, "cpus": n}`` of the running Ray cluster at ``address``; never starts a Ray.

    A dashboard URL (``http://HEAD:8265``, what ``lifecycle submit`` takes) is asked through
    Ray's State API: the ALIVE nodes' ``resources_total``, summed. Any other address
    (``HOST:6379``, ``ray://HOST:10001``, ``auto``) is joined as a driver for
    ``ray.cluster_resources()`` and left again. "local" (it would start a Ray here) is refused;
    an unreachable cluster is a PlanError (exit 2).
    """
    if address == "local":
        raise PlanError("--address local would start a Ray here; give a running cluster (HOST:6379, ray://HOST:10001, "
                        "http://HOST:8265, auto)")
    if address.startswith(("http://", "https://")):
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], limit=100_000, detail=True,
                               raise_on_missing_output=False)
        except Exception as e:  # connection refused, authentication, a URL that is not a Ray dashboard
            raise PlanError(f"--address {address}: cannot list the cluster's nodes: {_first_line(e)}") from None
        totals = {"GPU": 0.0, "CPU": 0.0}
        for node in nodes:
            for key in totals:
                totals[key] += float((node.resources_total or {}).get(key, 0))
        return {"gpus": totals["GPU"], "cpus": totals["CPU"]}
    import ray

    connect = not ray.is_initialized()
    try:
        if connect:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
    except Exception as e:  # ConnectionError, or whatever the client raises for a bad address
        raise PlanError(f"--address {address}: cannot reach a running Ray cluster: {_first_line(e)}") from None
    finally:
        if connect and ray.is_initialized():
            ray.shutdown()
    return {"gpus": float(resources.get("GPU", 0)), "cpus": float(resources.get("CPU", 0))}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def print_spec_plan(plan: dict) -> None:
    """Render ``build_spec_plan``'s dict: a header, one table row per training step, notes, verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # logs: no wrap at 80

    def line(text, style=None):
        console.print(text, markup=False, style=style)

    scale, spec, cluster, memory_gb = plan["scale"], plan["spec"], plan["cluster"], plan["gpu_memory_gb"]
    if plan["on_gpu"]:
        workers = (f"{scale['workers']} workers x {scale['gpus_per_worker']:g} GPU, "
                   f"{_plural(scale['cpus_per_worker'], 'CPU')} each")
        gpus = (f"cluster: {cluster['gpus']:g} GPUs ({cluster['source']})" if cluster["gpus"] is not None
                else "cluster: not checked (give --gpus N or --address ADDR)")
        where = f"{gpus}, {memory_gb:g} GB per GPU"
    else:
        workers = f"{scale['workers']} CPU workers, {_plural(scale['cpus_per_worker'], 'CPU')} each"
        where = "runs on CPU workers (scale.gpus_per_worker 0): the figures are host RAM per worker, no GPU memory to fit"
    line(f"Training memory plan for {spec['name']} ({spec['path']}): {workers}", style="bold")
    line(where)
    table = Table()
    for column, justify in (("step", "left"), ("phase", "left"), ("params", "right"), ("strategy", "left"),
                            ("precision", "left"), ("micro-batch x seq", "right"),
                            ("GB per GPU" if plan["on_gpu"] else "GB per worker", "right"), ("fits", "left"),
                            ("recommended", "left")):
        table.add_column(column, justify=justify)
    for s in plan["steps"]:
        if not s["planned"]:
            table.add_row(s["step"], s["phase"], "-", "role actors", "-", "-", "-", "-", "-", style="dim")
            continue
        total = s["per_gpu_bytes"] if plan["on_gpu"] else s["per_device_bytes"]["total"]
        fits = {True: "yes", False: "NO", None: "CPU"}[s["fits"]]
        r = s["recommendation"]
        table.add_row(s["step"], s["phase"], _count(s["n_params"]), _short_setup(s["strategy"], s["stage"], s["cpu_offload"]),
                      s["precision"], f"{s['micro_batch']} x {s['seq']}", _cell(total), fits,
                      _short_setup(r["strategy"], r["stage"], r["cpu_offload"]),
                      style=None if s["fits"] is not False else "bold red")
    console.print(table)
    for s in plan["steps"]:
        if s["notes"]:
            line(f"{s['step']}: {'; '.join(s['notes'])}", style="dim")
    for problem in plan["problems"]:
        line(f"Problem: {problem}", style="bold red")
    if not plan["problems"] and plan["on_gpu"]:
        line(f"Fits: every training step fits {memory_gb:g} GB per GPU"
             + (f", on the cluster's {cluster['gpus']:g} GPUs." if cluster["gpus"] is not None else "."))
    elif not plan["problems"]:
        line("Fits: CPU workers, nothing to check against GPU memory"
             + (f" (the cluster's {cluster['gpus']:g} GPUs go unused: scale.gpus_per_worker=1 would train on them)."
                if cluster["gpus"] else "."))


def _plural(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def _short_setup(strategy: str, stage: int | None, offload: bool) -> str:
    name = {"ddp": "DDP", "fsdp": "FSDP", "deepspeed": f"DeepSpeed ZeRO-{stage}"}[strategy]
    return name + (" + offload" if offload else "")
