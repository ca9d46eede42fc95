"""GPU-only: bf16 mixed precision and activation checkpointing. Skipped without CUDA."""

import os

import pytest
import torch
import torch.distributed as dist

from components.core.models import ModelConfig, build_causal_lm
from components.core.parallel import wrap

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_bf16_training_with_activation_checkpointing_learns(strategy, tmp_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29611", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = build_causal_lm(ModelConfig(n_layer=2, n_embd=64, n_head=2, n_positions=32), 128, 0, 0, 1)
        model.gradient_checkpointing_enable()
        par = wrap(model, strategy, 1e-2, 0.0, 1.0, 1, 20, torch.device("cuda", 0), bf16=True)
        batch = torch.randint(0, 128, (4, 32), device="cuda")
        losses = []
        for _ in range(20):
            with torch.autocast("cuda", torch.bfloat16, enabled=par.autocast):
                loss = par.model(input_ids=batch, labels=batch).loss
            par.backward(loss)
            par.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] / 2
    finally:
        dist.destroy_process_group()
