"""PPO-ptx: the policy's steps also lower the demonstrations' NLL, and only when asked to."""

import pytest
import torch

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.rlhf.roles import Policy, _logprobs


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptx")
    examples = generate_tasks(10, seed=2)
    tok = train_bpe([e.prompt + e.response for e in examples] * 3, TokenizerConfig(vocab_size=400))
    lm = build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), len(tok),
                         tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0)
    lm.save_pretrained(root)
    tok.save_pretrained(root)
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    demos = ([encode(e.prompt) for e in examples[:8]], [encode(e.response) + [tok.eos_token_id] for e in examples[:8]])
    return str(root), demos


def _demo_nll(policy: Policy, demos) -> float:
    with torch.no_grad():
        lp, _, mask = _logprobs(policy.model, demos[0], demos[1], policy.tokenizer.pad_token_id, 1.0)
    return float(-(lp * mask).sum() / mask.sum())


@pytest.mark.parametrize("ptx_coef", [0.0, 1.0])
def test_ptx_lowers_the_demonstrations_nll_and_plain_ppo_does_not_see_them(policy_dir, ptx_coef):
    model_dir, demos = policy_dir
    policy = Policy(model_dir, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]}, lr=1e-2, grad_clip=1.0, seed=0)
    # Rollouts whose advantages are all zero: the clipped surrogate has no gradient, so any move is ptx's.
    prompts, responses = demos[0], [r[:3] for r in demos[1]]
    old = policy.logprobs(prompts, responses, 1.0)
    before = _demo_nll(policy, demos)
    for seed in range(5):
        stats = policy.train(prompts, responses, old, torch.zeros_like(old), 1.0, epochs=1, minibatch=4, clip=0.2,
                             seed=seed, demos=demos, ptx_coef=ptx_coef)
    after = _demo_nll(policy, demos)
    if ptx_coef:
        assert after < before - 0.05 and stats["ptx_nll"] > 0
    else:
        assert after == pytest.approx(before, abs=1e-6) and stats["ptx_nll"] == 0
