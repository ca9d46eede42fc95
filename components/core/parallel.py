"""Data-parallel strategies for one training process: FSDP2, DDP or DeepSpeed ZeRO.

Pure torch (and deepspeed): the process group already exists (Ray Train made it).
Each strategy is the same small record of functions, so a training loop reads the
same whatever the strategy:

    par = wrap(model, strategy="fsdp", ...)
    with torch.autocast(device.type, torch.bfloat16, enabled=par.autocast):
        loss = par.model(**batch).loss
    for each of grad_accum micro-batches: par.backward(loss)   # loss: the micro-batch mean
    grad_norm = par.step()
    par.save(dir) / par.load(dir)          # resumable training state
    full = par.full_state_dict()           # on every rank; whole weights, for export

Checkpoints of ddp/fsdp hold whole (unsharded) tensors as safetensors plus JSON, so
they load on any number of workers and nothing is unpickled. DeepSpeed keeps its own
checkpoint format (ZeRO partitions), loaded with deepspeed's loader.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from components.core.models import transformer_blocks

Strategy = Literal["fsdp", "ddp", "deepspeed"]


@dataclass
class Parallel:
    model: torch.nn.Module  # call this for forward passes (the wrapped module)
    autocast: bool  # run forward passes under torch.autocast(bf16): DDP's mixed precision
    backward: Callable[[torch.Tensor], None]
    step: Callable[[], float]  # clip, optimizer and scheduler step, zero grads; returns the grad norm
    save: Callable[[Path], None]  # every rank calls it; rank 0's files suffice for ddp/fsdp
    load: Callable[[Path], None]
    full_state_dict: Callable[[], dict[str, torch.Tensor]]  # collective: every rank calls it
    lr: Callable[[], float]


def wrap(
    model: torch.nn.Module,
    strategy: Strategy,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    warmup_steps: int,
    total_steps: int,
    device: torch.device,
    zero_stage: int = 3,
    cpu_offload: bool = False,
    bf16: bool = False,
    micro_batch: int = 1,
    grad_accum: int = 1,
) -> Parallel:
    """Shard or replicate ``model`` over the default process group and build its optimizer.

    lr schedule: linear warmup for ``warmup_steps`` then cosine decay to 0 at ``total_steps``.
    bf16: mixed precision (FSDP's param/reduce dtypes, autocast for DDP, DeepSpeed's bf16).
    """
    if strategy == "deepspeed":
        return _deepspeed(model, lr, weight_decay, grad_clip, warmup_steps, total_steps, zero_stage, cpu_offload, bf16, micro_batch, grad_accum)
    from transformers import get_cosine_schedule_with_warmup

    model.to(device)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        wrapped = model
    elif strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        raise ValueError(f"unknown strategy {strategy!r}: expected fsdp, ddp or deepspeed")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)

    def step() -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_state_dict() -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = full_state_dict()
        optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            save_file(_untie(weights), directory / "weights.safetensors")
            tensors = {f"{name}::{key}": value.contiguous() for name, state in optim["state"].items() for key, value in state.items()}
            save_file(tensors, directory / "optimizer.safetensors")
            (directory / "optimizer.json").write_text(json.dumps({"param_groups": optim["param_groups"], "scheduler": scheduler.state_dict()}))

    def load(directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, _retie(load_file(directory / "weights.safetensors"), model), options=options)
        meta = json.loads((directory / "optimizer.json").read_text())
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(directory / "optimizer.safetensors").items():
            name, _, field = key.rpartition("::")
            state.setdefault(name, {})[field] = value
        set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta["param_groups"]}, options=options)
        scheduler.load_state_dict(meta["scheduler"])

    def backward(loss: torch.Tensor) -> None:
        (loss / grad_accum).backward()

    autocast = bf16 and strategy == "ddp"  # FSDP casts through its policy
    return Parallel(wrapped, autocast, backward, step, save, load, full_state_dict, lambda: scheduler.get_last_lr()[0])


def _deepspeed(model, lr, weight_decay, grad_clip, warmup_steps, total_steps, stage, cpu_offload, bf16, micro_batch, grad_accum) -> Parallel:
    import deepspeed

    zero: dict[str, Any] = {"stage": stage}
    if cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {"total_num_steps": total_steps, "warmup_num_steps": warmup_steps, "cos_min_ratio": 0.0, "warmup_min_ratio": 0.0},
        },
        "steps_per_print": 10**9,
    }
    adamw = {"lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.95]}
    optimizer = None
    if cpu_offload:  # offloaded states need DeepSpeed's own CPU Adam (a compiled op)
        config["optimizer"] = {"type": "AdamW", "params": adamw}
    else:  # torch's AdamW: DeepSpeed's would JIT-compile a fused kernel first (minutes on 2 cores)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)
    if not torch.cuda.is_available():
        # On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce the first time it starts (about
        # a minute on 2 cores, on every fresh machine); gloo's all-reduce does the same job here.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), optimizer=optimizer,
                                           config=config, dist_init_required=False)

    micro = {"n": 0}

    def backward(loss: torch.Tensor) -> None:
        # DeepSpeed scales by 1/grad_accum itself and counts micro-steps in engine.step(),
        # which only updates weights at the accumulation boundary.
        engine.backward(loss)
        micro["n"] += 1
        if micro["n"] % grad_accum:
            engine.step()

    def step() -> float:
        engine.step()
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict() -> dict[str, torch.Tensor]:
        # ZeRO-3 partitions each parameter; gather them (a collective) to read whole tensors.
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=stage == 3):
            return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}

    def save(directory: Path) -> None:
        engine.save_checkpoint(str(directory), tag="zero")

    def load(directory: Path) -> None:
        engine.load_checkpoint(str(directory), tag="zero")

    return Parallel(engine, False, backward, step, save, load, full_state_dict, lambda: engine.get_lr()[0])


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage: store each tied tensor once (as its own copy)."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in weights.items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            continue
        seen[ptr] = name
        out[name] = tensor.contiguous()
    return out


def _retie(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fill keys dropped by _untie (tied weights) from the tensor they share."""
    if "lm_head.weight" not in weights:
        for name in ("transformer.wte.weight", "model.embed_tokens.weight"):
            if name in weights:
                weights["lm_head.weight"] = weights[name]
    return weights
