"""Every strategy trains and resumes exactly from its checkpoint: 2 gloo processes, no Ray.

Train 3 steps, checkpoint, train 2 more; a fresh pair of processes loads the checkpoint
and trains the same 2 steps: the losses must match (optimizer and schedule restored).
The same holds for a LoRA model (fine-tuning), whose frozen base weights must not move.
"""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.core.models import ModelConfig, build_causal_lm
from components.core.parallel import _retie, _untie, wrap
from components.core.peft_methods import LoraSettings, PromptTuningSettings, SelectiveSettings, apply_method

CFG = ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=16)


def model(lora: bool):
    base = build_causal_lm(CFG, 64, 0, 0, 1)
    if not lora:
        return base
    torch.manual_seed(1)
    # No LoRA dropout: the RNG stream is not part of a checkpoint, so dropout masks would differ.
    return apply_method(base, "lora", LoraSettings(r=4, dropout=0.0), PromptTuningSettings(), SelectiveSettings())


def _losses(rank, port, strategy, cases, out):
    """Run each case (stage, directory, resume, lora) in turn in one process group: train 5 steps
    and save after the third, or load and train steps 4-5."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = []
    for stage, directory, resume, lora in cases:
        par = wrap(model(lora), strategy, lr=1e-2, weight_decay=0.0, grad_clip=1.0,
                   warmup_steps=1, total_steps=10, device=torch.device("cpu"), zero_stage=stage)
        g = torch.Generator().manual_seed(rank)
        fixed = torch.randint(0, 64, (2, 16), generator=g)
        batches = [fixed.roll(i, dims=1) for i in range(5)]  # learnable: the same tokens, shifted
        losses = []
        if resume:
            par.load(directory)
        for i in range(3, 5) if resume else range(5):
            loss = par.model(input_ids=batches[i], labels=batches[i]).loss
            par.backward(loss)
            par.step()
            losses.append(loss.item())
            if i == 2 and not resume:
                par.save(directory)
        weights = par.full_state_dict()
        initial = {k: v for k, v in model(lora).state_dict().items() if "lora_" not in k}  # same seeds, untrained
        moved = sorted(k for k, v in initial.items() if k not in weights or not torch.equal(weights[k], v))
        results.append({"losses": losses, "params": sum(v.numel() for k, v in weights.items() if k != "lm_head.weight"),
                        "moved_base_weights": moved})
        dist.barrier()
    if rank == 0:
        out.put(results)
    dist.barrier()
    dist.destroy_process_group()


def run_pair(strategy, cases):
    """Results of `cases` (see _losses) from a fresh pair of gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_losses, args=(r, port, strategy, cases, out)) for r in range(2)]
    for p in procs:
        p.start()
    result = out.get(timeout=240)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return result


# A full model and a LoRA model per strategy, sharing each pair of processes (starting one costs more than
# the training). DeepSpeed: ZeRO stage 3 for the full model and stage 2 for the LoRA one; stage 1 is stage
# 2 without sharded gradients, the same engine path.
@pytest.mark.parametrize("strategy, full_stage, lora_stage", [("fsdp", 0, 0), ("ddp", 0, 0), ("deepspeed", 3, 2)])
def test_strategy_trains_and_resumes_exactly_with_a_full_and_a_lora_model(tmp_path, strategy, full_stage, lora_stage):
    cases = [(full_stage, tmp_path / "full", False), (lora_stage, tmp_path / "lora", True)]
    full, lora = run_pair(strategy, [(stage, d, False, is_lora) for stage, d, is_lora in cases])
    resumed, resumed_lora = run_pair(strategy, [(stage, d, True, is_lora) for stage, d, is_lora in cases])

    assert full["losses"][-1] < full["losses"][0]  # it learns
    assert resumed["losses"] == pytest.approx(full["losses"][3:], rel=1e-4)
    expected = sum(p.numel() for p in build_causal_lm(CFG, 64, 0, 0, 1).parameters())
    assert full["params"] == expected  # the gathered state dict is whole, not a shard
    if strategy != "deepspeed":  # portable checkpoint: safetensors + JSON, nothing pickled
        assert sorted(os.listdir(tmp_path / "full")) == ["optimizer.json", "optimizer.safetensors", "weights.safetensors"]
        json.loads((tmp_path / "full" / "optimizer.json").read_text())

    assert lora["losses"][-1] < lora["losses"][0]
    assert resumed_lora["losses"] == pytest.approx(lora["losses"][3:], rel=1e-4)
    assert lora["moved_base_weights"] == []  # every frozen weight, gathered after training, is bit-identical


@pytest.mark.parametrize("kind", ["causal", "reward", "prompt_tuning"])
def test_a_checkpoint_keeps_one_copy_of_tied_weights_and_loads_back_whole(kind):
    # Resuming a reward model (no lm_head) or a prompt-tuning model (its embedding named twice) used to
    # fail: the tie was assumed to be lm_head <-> wte instead of read from the model.
    from transformers import GPT2ForSequenceClassification

    base = build_causal_lm(CFG, 64, 0, 0, 1)
    if kind == "reward":
        net = GPT2ForSequenceClassification(base.config.__class__(**{**base.config.to_dict(), "num_labels": 1}))
    elif kind == "prompt_tuning":
        net = apply_method(base, "prompt_tuning", LoraSettings(), PromptTuningSettings(init_text=None), SelectiveSettings())
    else:
        net = base
    full = net.state_dict()
    stored = _untie(full)
    assert len(stored) < len(full) or kind == "reward"  # a tied tensor is stored once
    assert set(_retie(dict(stored), net)) == set(full)
