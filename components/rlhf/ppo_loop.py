"""The PPO loop, run by the step's driver over the four role actors (components/rlhf/roles.py).

One iteration, top to bottom:
    1. sample a batch of prompts (seeded by the iteration, so a resumed run draws the same ones)
    2. the policy samples one response per prompt                                  (generation)
    3. reference log-probs, reward scores, values and the policy's own log-probs, at once
    4. per-token rewards: the score at the last token minus kl_coef x KL to the reference; GAE
    5. policy and value updates, at once; PPO-ptx adds the demonstrations' NLL      (training)
    6. adapt kl_coef towards target_kl; report; every checkpoint_every iterations save all state
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray

from components import storage
from components.core.ppo import adaptive_kl_coef, gae, kl_penalized_rewards, masked_mean, pack, whiten
from components.rlhf.config import PPOConfig


def latest_checkpoint(root: str) -> str | None:
    """The newest complete `iter-NNNNN` checkpoint under root (a path or object-store URI): its
    `state` is written last, so one without it was cut short."""
    def complete(name: str) -> bool:
        state = storage.join(root, name, "state")
        return storage.exists(state) if storage.is_remote(state) else (Path(state) / "state.json").exists()

    done = [name for name in storage.listdir(root) if name.startswith("iter-") and complete(name)]
    return storage.join(root, done[-1]) if done else None


def save_checkpoint(root: str, roles: dict, state: dict) -> None:
    """Policy and value state (written by their actors, on any node) plus the loop's own state
    (iteration, kl_coef, history), the latter last; keeps the two newest."""
    final = storage.join(root, f"iter-{state['iteration']:05d}")
    ray.get([roles["policy"].save.remote(storage.join(final, "policy")), roles["value"].save.remote(storage.join(final, "value"))])
    with storage.writing(storage.join(final, "state")) as directory:
        (directory / "state.json.tmp").write_text(json.dumps(state))
        os.replace(directory / "state.json.tmp", directory / "state.json")
    for old in [name for name in storage.listdir(root) if name.startswith("iter-")][:-2]:
        storage.remove(storage.join(root, old))


def train(cfg: PPOConfig, roles: dict, prompts: list[list[int]], pad_id: int, checkpoints: str,
          report: Callable[[dict, int], None], demos: list[tuple[list[int], list[int]]] = ()) -> dict:
    """Run (or resume) PPO to cfg.iterations; returns the final state {iteration, kl_coef, history}.

    demos: (prompt, answer + eos) token lists of the training data, for PPO-ptx (cfg.ptx_coef > 0).
    """
    state = {"iteration": 0, "kl_coef": cfg.kl_coef, "history": []}
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        state = json.loads((storage.localize(storage.join(resume, "state")) / "state.json").read_text())
        ray.get([roles["policy"].load.remote(storage.join(resume, "policy")), roles["value"].load.remote(storage.join(resume, "value"))])
    policy, reference, reward, value = roles["policy"], roles["reference"], roles["reward"], roles["value"]

    for iteration in range(state["iteration"], cfg.iterations):
        # 1-2. Rollouts.
        rng = np.random.default_rng(cfg.seed + iteration)
        batch = [prompts[i] for i in rng.choice(len(prompts), cfg.rollout_batch, replace=len(prompts) < cfg.rollout_batch)]
        start = time.perf_counter()
        responses = ray.get(policy.generate.remote(batch, cfg.max_new_tokens, cfg.temperature, cfg.seed + iteration))
        generation_s = time.perf_counter() - start

        # 3. Every role scores the rollout, in parallel.
        start = time.perf_counter()
        old_logprobs, ref_logprobs, scores, values = ray.get([
            policy.logprobs.remote(batch, responses, cfg.temperature),
            reference.logprobs.remote(batch, responses, cfg.temperature),
            reward.score.remote(batch, responses),
            value.values.remote(batch, responses),
        ])
        scoring_s = time.perf_counter() - start

        # 4. Rewards with the KL penalty, then advantages.
        mask = pack(batch, responses, pad_id)["mask"]
        rewards, kl = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, state["kl_coef"])
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)

        # 5. Policy and value updates, in parallel (PPO-ptx: plus demonstrations' NLL in the policy's steps).
        shown = None
        if cfg.ptx_coef > 0 and demos:
            picked = [demos[i] for i in rng.choice(len(demos), cfg.rollout_batch, replace=len(demos) < cfg.rollout_batch)]
            shown = ([p for p, _ in picked], [a for _, a in picked])
        start = time.perf_counter()
        policy_stats, value_stats = ray.get([
            policy.train.remote(batch, responses, old_logprobs, advantages, cfg.temperature, cfg.ppo_epochs,
                                cfg.minibatch, cfg.clip, cfg.seed + iteration, shown, cfg.ptx_coef),
            value.train.remote(batch, responses, values, returns, cfg.ppo_epochs, cfg.minibatch, cfg.value_clip,
                               cfg.seed + iteration),
        ])
        training_s = time.perf_counter() - start

        # 6. Controller, report, checkpoint.
        kl_per_response = float(kl.sum(1).mean())
        metrics = {
            "iteration": iteration + 1,
            "reward": float(scores.mean()),
            "kl": kl_per_response,
            "kl_coef": state["kl_coef"],
            "penalized_reward": float(rewards.sum(1).mean()),
            "response_length": float(mask.sum(1).mean()),
            "value_mse": float(masked_mean((values - returns) ** 2, mask)),
            "generation_s": generation_s,
            "scoring_s": scoring_s,
            "training_s": training_s,
            **policy_stats,
            **value_stats,
        }
        if cfg.target_kl is not None:
            state["kl_coef"] = adaptive_kl_coef(state["kl_coef"], kl_per_response, cfg.target_kl, cfg.kl_horizon, len(batch))
        state["iteration"] = iteration + 1
        state["history"].append(metrics)
        report(metrics, iteration + 1)
        if state["iteration"] % cfg.checkpoint_every == 0 or state["iteration"] == cfg.iterations:
            save_checkpoint(checkpoints, roles, state)
    return state
