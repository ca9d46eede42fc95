import torch

from components.core.models import ModelConfig, build_causal_lm, count_parameters
from components.pretrain.config import PretrainConfig


def test_tiny_default_is_about_one_million_parameters():
    model = build_causal_lm(PretrainConfig().model, 2048, 0, 0, 1)
    assert 0.8e6 < count_parameters(model) < 1.3e6


def test_same_seed_same_weights_and_llama_builds():
    a = build_causal_lm(ModelConfig(n_layer=1, n_embd=16, n_head=2), 64, 0, 0, 1, seed=3)
    b = build_causal_lm(ModelConfig(n_layer=1, n_embd=16, n_head=2), 64, 0, 0, 1, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    llama = build_causal_lm(ModelConfig(architecture="llama", n_layer=1, n_embd=16, n_head=2), 64, 0, 0, 1)
    assert llama(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits.shape == (1, 4, 64)
