"""``lifecycle plan --spec``: every training step of a workflow at the spec's scale, against the GPUs at hand.

Which steps are planned, and how each is sized from its config, is on the phase table
(``Phase.runner`` and ``Phase.sizing`` in workflows/phases.py).
"""

from __future__ import annotations

import argparse
import math

from components.core import memory
from components.core.memory import GB, format_gb
from workflows.cluster_query import cluster_resources, host_memory_bytes
from workflows.phases import PHASES
from workflows.plan_model import PlanError, spec_model
from workflows.plan_print import short_setup

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
        resolved = load_spec(args.spec, args.overrides, getattr(args, "workdir", None))
    except SpecError as e:
        message = str(e)  # override syntax errors do not name the file; everything else does
        raise PlanError(message if str(args.spec) in message else f"{args.spec}: {message}") from None

    scale = resolved.spec.scale
    on_gpu = scale.gpus_per_worker > 0
    memory_bytes = int(args.device_memory * GB)
    cluster = {"gpus": args.gpus, "cpus": None, "source": "--gpus" if args.gpus is not None else None}
    if args.address:
        cluster = {**cluster_resources(args.address), "source": f"--address {args.address}"}
    # CPU workers hold everything in host memory: the cluster's (Ray's `memory` resource) or this machine's.
    host_bytes = cluster.get("memory_bytes") or host_memory_bytes()

    models: dict[str, tuple] = {}  # pretrain step -> (ModelSize, context length, vocab), built once each
    steps = []
    for name in resolved.order:
        uses = resolved.spec.steps[name].uses
        phase = PHASES[uses]
        if phase.runner == "actors":
            steps.append({"step": name, "phase": uses, "planned": False,
                          "notes": [f"{phase.placement}, not Ray Train workers: not estimated"]})
            continue
        if phase.runner != "ray_train":
            continue
        setup = training_setup(uses, resolved.configs[name], on_gpu)
        if setup is None:
            continue
        source = upstream_pretrain(resolved, name)
        if source not in models:
            models[source] = spec_model(resolved, source)
        size, context, vocab = models[source]
        steps.append(plan_step(name, uses, setup, size, setup["seq"] or context, vocab, source, scale, memory_bytes, host_bytes))

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
        "host_memory_gb": host_bytes / GB,
        "cluster": cluster,
        "steps": steps,
        "problems": problems,
        "fits": not problems,
    }


def training_setup(uses: str, cfg, on_gpu: bool) -> dict | None:
    """How a step of phase ``uses`` trains, read from its config where the phase's ``Sizing`` says;
    None if it trains nothing (``max_steps`` 0).

    Keys: strategy, stage (ZeRO stage, deepspeed only), cpu_offload, precision (what the loop
    really uses: only pretrain has mixed precision), batch (sequences per worker per forward pass
    kept for backward), seq (the longest input in tokens; None: the model's context length),
    vocab_logits (the model outputs a vocabulary-sized logit per token),
    frozen_copies (whole fp32 models each worker holds beside the trained one), trials (Ray Train
    runs at once), notes (why a figure is an upper bound).
    """
    sizing = PHASES[uses].sizing
    if PHASES[uses].runner != "ray_train" or sizing is None:
        raise PlanError(f"phase {uses!r} is not a Ray Train phase")
    block = getattr(cfg, sizing.block) if sizing.block else cfg
    if block.max_steps == 0:
        return None

    def field(name: str | None, default=None):
        return getattr(block, name) if name else default

    strategy, deepspeed = block.strategy, block.strategy == "deepspeed"
    precision = field(sizing.precision, "fp32")
    if precision == "auto":
        precision = "bf16" if on_gpu else "fp32"
    method = field(sizing.method, "full")
    frozen_reference = sizing.reference and method == "full"  # a LoRA policy's reference is itself, adapter off
    frozen_teacher = field(sizing.teacher, 0) > 0  # the teacher, whole on every worker
    sweep = field(sizing.sweep)
    notes: list[str] = []
    checkpointing = field(sizing.checkpointing, "off")
    if checkpointing == "on" or (checkpointing == "auto" and on_gpu):
        notes.append("activations counted as if kept, but checkpointing is on (upper bound)")
    if sizing.pairs:
        # Chosen and rejected answers both go forward and are both kept for the backward pass.
        notes.append(f"pairs: chosen + rejected = 2 x {block.micro_batch_size} sequences")
    if method != "full":
        notes.append(f"{method} counted as training every weight (upper bound)")
    if frozen_reference:
        notes.append("+ the frozen fp32 reference")
    if sizing.teacher:
        notes.append("student counted at the teacher's size (upper bound)"
                     + ("; + the frozen fp32 teacher" if frozen_teacher else ""))
    if not sizing.packed:
        notes.append(f"sequences at {sizing.seq or 'the full context'} (upper bound: a batch pads to its longest example)")
    return {
        "strategy": strategy,
        "stage": field(sizing.stage) if deepspeed else None,
        "cpu_offload": bool(field(sizing.cpu_offload, False)) and deepspeed,  # FSDP ignores cpu_offload
        "precision": precision,
        "batch": (2 if sizing.pairs else 1) * block.micro_batch_size,
        "seq": field(sizing.seq),
        "vocab_logits": sizing.vocab_logits,
        "frozen_copies": int(frozen_reference) + int(frozen_teacher),
        "trials": sweep.max_concurrent_trials if sweep else 1,
        "notes": notes,
    }


def upstream_pretrain(resolved, name: str) -> str:
    """The pretrain (or base) step whose model ``name`` trains: itself, or the first one up its ``needs``
    through steps that produce a model (finetune -> pretrain, reward -> finetune -> pretrain)."""
    seen, todo = set(), [name]
    while todo:
        step = todo.pop(0)
        if step in seen:
            continue
        seen.add(step)
        spec = resolved.spec.steps[step]
        if spec.uses in ("pretrain", "base"):
            return step
        todo += [n for n in spec.needs if PHASES[resolved.spec.steps[n].uses].produces in ("model", "reward_model")]
    raise PlanError(f"{resolved.path}: step '{name}' trains a model that no pretrain or base step upstream brings")


def plan_step(name: str, uses: str, setup: dict, size: memory.ModelSize, seq: int, vocab: int, source: str,
              scale, memory_bytes: int, host_bytes: int) -> dict:
    """One step's estimate at the spec's scale: bytes per worker and per GPU, fit, recommendation. On
    CPU workers the fit is against `host_bytes`, the memory all workers (and concurrent trials) share."""
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
    on_host = per_worker * scale.workers * setup["trials"]
    fits = per_gpu <= memory_bytes if on_gpu else on_host <= host_bytes
    notes = list(setup["notes"])
    logits = setup["batch"] * seq * vocab * _FP32_BYTES if setup["vocab_logits"] else 0
    if logits >= 0.1 * per_worker:
        notes.append(f"not counted: the logits, {format_gb(logits)} GB per fp32 copy ({setup['batch']} x {seq} x vocab {vocab})")
    if sharing > 1:
        notes.append(f"{sharing} workers share each GPU (scale.gpus_per_worker {scale.gpus_per_worker:g})")
    rec = est.recommendation
    problem = None
    if fits is False and not on_gpu:
        problem = (f"step '{name}' ({uses}) needs {format_gb(on_host)} GB of host memory on CPU workers "
                   f"({scale.workers} workers x {format_gb(per_worker)} GB" + (f" x {setup['trials']} trials" if setup["trials"] > 1 else "")
                   + f") > {format_gb(host_bytes)} GB")
    elif fits is False:
        # The recommender's reason already starts "Does not fit: ..." when nothing fits.
        advice = f"Recommended: {rec.reason}" if rec.per_device_bytes <= memory_bytes else rec.reason
        problem = (f"step '{name}' ({uses}, {short_setup(est.strategy, est.stage, est.cpu_offload)}) needs "
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

