"""Perplexity = exp(mean token NLL), with a sliding window over long texts."""

import math

import pytest
import torch

from components.core.models import ModelConfig, build_causal_lm
from components.core.perplexity import perplexity, token_nll


class Uniform(torch.nn.Module):
    """Assigns every token the same probability 1/vocab."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    tokens = torch.randint(0, 50, (300,))
    assert math.isclose(perplexity(Uniform(50), tokens, context=64), 50.0, rel_tol=1e-6)


def test_every_token_but_the_first_is_scored_exactly_once():
    for n, context, stride in [(300, 64, 32), (300, 64, 63), (10, 64, None), (129, 64, 17), (65, 64, 1)]:
        _, count = token_nll(Uniform(7), torch.randint(0, 7, (n,)), context, stride)
        assert count == n - 1
    with pytest.raises(ValueError, match="stride"):
        token_nll(Uniform(7), torch.randint(0, 7, (100,)), 64, 64)


def test_matches_the_models_own_loss_when_the_text_fits():
    model = build_causal_lm(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64), 100, 0, 0, 1)
    tokens = torch.randint(0, 100, (50,))
    with torch.no_grad():
        loss = model(input_ids=tokens[None], labels=tokens[None]).loss
    assert math.isclose(perplexity(model, tokens, context=64), math.exp(loss.item()), rel_tol=1e-5)


def test_sliding_window_gives_more_context_than_disjoint_chunks():
    # A repeating pattern longer than the window: a stride < context sees the history.
    model = build_causal_lm(ModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=16), 20, 0, 0, 1)
    tokens = torch.randint(0, 20, (100,))
    nll_full, n_full = token_nll(model, tokens, 16, stride=15)
    nll_slide, n_slide = token_nll(model, tokens, 16, stride=4)
    assert n_full == n_slide == 99
    assert nll_full != nll_slide
