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

This module is the CLI (the parser, ``run_plan``) and the one-model plan (``--params``/``--model``);
a model's size comes from workflows/plan_model.py, a spec's plan from workflows/plan_spec.py,
the tables from workflows/plan_print.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from components.core import memory
from components.core.memory import GB
from workflows.plan_model import PlanError, load_model, parse_param_count
from workflows.plan_print import print_plan, print_spec_plan
from workflows.plan_spec import build_spec_plan


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
    p.add_argument("--workdir", default=None,
                   help="with --spec: the run's working folder, whose hub cache (hf:) and registry (models:/) a base "
                        "step's source is read from (default ./.lifecycle)")
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

