"""PPO's four roles as Ray actors on the test cluster: the loop runs, the reference stays frozen,
the policy moves, and after an actor is killed a new set of roles resumes from the last saved
iteration and replays the lost one exactly."""

from pathlib import Path

import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from transformers import AutoModelForSequenceClassification

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.rlhf import ppo_loop
from components.rlhf.config import PPOConfig
from components.rlhf.step import _start_roles

LOGGED = {"reward", "kl", "kl_coef", "entropy", "clip_fraction", "policy_loss", "value_loss", "response_length",
          "generation_s", "scoring_s", "training_s"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny causal LM (the fine-tuned model) and a reward model on its body; plus tokenized prompts."""
    root = tmp_path_factory.mktemp("ppo-models")
    examples = generate_tasks(20, seed=3)
    tok = train_bpe([e.prompt + e.response for e in examples] * 3, TokenizerConfig(vocab_size=400))
    lm = build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), len(tok),
                         tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0)
    lm.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    torch.manual_seed(1)
    reward = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1, pad_token_id=tok.pad_token_id)
    reward.save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    prompts = [tok(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
    return str(root / "policy"), str(root / "reward"), prompts, tok.pad_token_id


def test_roles_train_keep_the_reference_frozen_and_resume_after_a_killed_actor(ray_address, models, tmp_path):
    policy_dir, reward_dir, prompts, pad_id = models
    cfg = PPOConfig(iterations=4, rollout_batch=8, minibatch=4, max_new_tokens=6, checkpoint_every=2, cpus_per_role=0.25,
                    lr=5e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]})
    pg = placement_group([{"CPU": 0.25}] * 4, strategy="PACK")
    assert pg.wait(timeout_seconds=60)
    roles = _start_roles(cfg, policy_dir, reward_dir, pg)
    try:
        fingerprint = ray.get(roles["reference"].fingerprint.remote())
        seen = []

        def report_then_kill(metrics, iteration):
            seen.append(metrics)
            if iteration == 3:  # after iteration 3; its checkpoint would come at 4
                ray.kill(roles["value"])

        with pytest.raises(ray.exceptions.RayActorError):
            ppo_loop.train(cfg, roles, prompts, pad_id, str(tmp_path), report_then_kill)
        assert [m["iteration"] for m in seen] == [1, 2, 3]
        assert LOGGED <= set(seen[0])
        # LoRA starts as a zero update: the first rollout's policy is the reference, so no KL is paid
        assert seen[0]["kl"] == pytest.approx(0.0, abs=1e-5)
        assert Path(ppo_loop.latest_checkpoint(str(tmp_path))).name == "iter-00002"

        # The reference never moved; the policy did.
        assert ray.get(roles["reference"].fingerprint.remote()) == fingerprint
        responses = ray.get(roles["policy"].generate.remote(prompts[:4], 6, 1.0, 0))
        mine, frozen = ray.get([roles["policy"].logprobs.remote(prompts[:4], responses, 1.0),
                                roles["reference"].logprobs.remote(prompts[:4], responses, 1.0)])
        assert not torch.allclose(mine, frozen)

        # A fresh set of roles resumes from iteration 2 and replays iteration 3 as it was.
        for actor in roles.values():
            ray.kill(actor)
        roles = _start_roles(cfg, policy_dir, reward_dir, pg)
        resumed = []
        state = ppo_loop.train(cfg, roles, prompts, pad_id, str(tmp_path), lambda metrics, iteration: resumed.append(metrics))
        assert [m["iteration"] for m in resumed] == [3, 4] and state["iteration"] == 4
        assert [h["iteration"] for h in state["history"]] == [1, 2, 3, 4]
        for key in ("reward", "kl", "response_length", "kl_coef"):
            assert resumed[0][key] == pytest.approx(seen[2][key], rel=1e-4, abs=1e-5), key
        assert Path(ppo_loop.latest_checkpoint(str(tmp_path))).name == "iter-00004"
        # Run again at the end: nothing left to do, the saved state comes back.
        assert ppo_loop.train(cfg, roles, prompts, pad_id, str(tmp_path), lambda *a: pytest.fail("no iteration expected"))["iteration"] == 4
    finally:
        for actor in roles.values():
            ray.kill(actor)
        remove_placement_group(pg)
