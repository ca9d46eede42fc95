"""Fixtures shared by the unit tests of the server's parts (test_deploy.py, test_logprobs.py)."""

import pytest

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe

PROMPTS = ["### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "Sort the words: cat dog"]


@pytest.fixture(scope="module")
def tok():
    """A 400-token BPE trained on instruction tasks."""
    return train_bpe([e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3, TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="module")
def model(tok):
    """An untrained 2 x 32 GPT-2 over `tok`, in eval mode."""
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=96)
    return build_causal_lm(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0).eval()
