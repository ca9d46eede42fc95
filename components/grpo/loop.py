"""The GRPO loop, run by the step's driver over the role actors (components/grpo/roles.py).

One iteration, top to bottom:
    1. draw prompts (seeded by the iteration, so a resumed run draws the same ones)
    2. the learner's trainable weights go to every rollout actor                      (sync)
    3. the rollout actors sample G completions per prompt, each its share of prompts  (generation)
       a dead rollout actor is replaced (fresh actor, current weights) and its share sampled again
    4. every reward term on the decoded completions, combined by weight              (reward)
    5. advantages relative to each group; the reference's log-probabilities          (reference)
    6. the learner's clipped updates with the KL term                               (training)
    7. report; every checkpoint_every iterations save the learner and the loop state
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import torch

from components import storage
from components.core.grpo import equal_groups, group_advantages
from components.core.ppo import pack
from components.core.verifiers import BUILTIN_TERMS, call_reward_function, combine, verifier_rewards
from components.grpo.config import REWARD_MODEL_TERM, GRPOConfig


class RewardError(ValueError):
    """A reward function failed on a completion (raised, NaN, wrong length); names the prompt."""


def latest_checkpoint(root: str) -> str | None:
    """The newest complete `iter-NNNNN` under root: its `state` is written last, so one without it was cut short."""
    def complete(name: str) -> bool:
        state = storage.join(root, name, "state")
        return storage.exists(state) if storage.is_remote(state) else (Path(state) / "state.json").exists()

    done = [name for name in storage.listdir(root) if name.startswith("iter-") and complete(name)]
    return storage.join(root, done[-1]) if done else None


def save_checkpoint(root: str, learner, state: dict) -> None:
    """The learner's weights and optimiser (written by its actor) and the loop state, last; keeps the two newest."""
    final = storage.join(root, f"iter-{state['iteration']:05d}")
    ray.get(learner.save.remote(storage.join(final, "learner")))
    with storage.writing(storage.join(final, "state")) as directory:
        (directory / "state.json.tmp").write_text(json.dumps(state))
        os.replace(directory / "state.json.tmp", directory / "state.json")
    for old in [name for name in storage.listdir(root) if name.startswith("iter-")][:-2]:
        storage.remove(storage.join(root, old))


def load_state(root: str, learner) -> dict | None:
    """The last saved loop state, with the learner restored to it; None when nothing was saved."""
    resume = latest_checkpoint(root)
    if resume is None:
        return None
    ray.get(learner.load.remote(storage.join(resume, "learner")))
    return json.loads((storage.localize(storage.join(resume, "state")) / "state.json").read_text())


def _shares(n: int, parts: int) -> list[range]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def sync(actors: dict, replace_rollout: Callable[[int, object], object], weights_ref) -> int:
    """Send the learner's weights to every rollout actor; a dead one is replaced (with them). Returns the replacements."""
    pending = [actor.set_weights.remote(weights_ref) for actor in actors["rollouts"]]
    replaced = 0
    for k, ref in enumerate(pending):
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            replace_rollout(k, weights_ref)
            replaced += 1
    return replaced


def generate(cfg: GRPOConfig, actors: dict, replace_rollout: Callable[[int, dict], object], weights_ref, prompts: list[list[int]],
             seed: int) -> tuple[list[list[int]], int]:
    """(completions prompt-major, rollout actors replaced): each rollout actor samples its share of the prompts."""
    rollouts, restarts = actors["rollouts"], 0
    shares = _shares(len(prompts), len(rollouts))
    pending = {k: rollouts[k].generate.remote([prompts[i] for i in share], cfg.group_size, cfg.max_new_tokens,
                                              cfg.temperature, seed + k) for k, share in enumerate(shares)}
    out: dict[int, list] = {}
    while pending:
        k, ref = next(iter(pending.items()))
        try:
            out[k] = ray.get(ref)
            del pending[k]
        except ray.exceptions.RayActorError:
            restarts += 1
            if restarts > 3 * len(rollouts):
                raise
            rollouts[k] = replace_rollout(k, weights_ref)  # a fresh actor with the current weights samples the share again
            pending[k] = rollouts[k].generate.remote([prompts[i] for i in shares[k]], cfg.group_size, cfg.max_new_tokens,
                                                     cfg.temperature, seed + k)
    return [c for k in range(len(shares)) for c in out[k]], restarts


def rewards(cfg: GRPOConfig, actors: dict, functions: dict[str, Callable], prompts: list[str], prompt_ids: list[list[int]],
            completions: list[str], completion_ids: list[list[int]], references: list[str], families: list[str]
            ) -> tuple[dict[str, list[float]], list[tuple[int, str, str]]]:
    """({term: [B] values}, problems as (completion index, term, reason)) for every term of cfg.rewards."""
    terms, problems = {}, []
    for name in cfg.rewards:
        if name in BUILTIN_TERMS:
            terms[name] = verifier_rewards(name, families, completions, references, cfg.numeric_tolerance)
        elif name == REWARD_MODEL_TERM:
            terms[name] = ray.get(actors["reward"].score.remote(prompt_ids, completion_ids)).tolist()
        else:
            terms[name], bad = call_reward_function(functions[name], prompts, completions, references, families)
            problems += [(i, name, reason) for i, reason in bad]
    return terms, problems


def train(cfg: GRPOConfig, actors: dict, replace_rollout: Callable[[int, object], object], data: list[dict], tokenizer,
          functions: dict[str, Callable], checkpoints: str, report: Callable[[dict, int], None]) -> dict:
    """Run (or resume) to cfg.iterations; returns the final state {iteration, history, ...}.

    data: training prompts, each {"ids": prompt tokens, "prompt", "reference", "family"}.
    actors: {"learner", "reference", "rollouts": [...], "reward"?}; replace_rollout(k, weights)
    starts a new rollout actor k with those weights (the list is updated in place).
    """
    state = load_state(checkpoints, actors["learner"]) or {"iteration": 0, "history": [], "skipped_groups": 0, "rollout_restarts": 0}
    learner, reference = actors["learner"], actors["reference"]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    train_cfg = {k: getattr(cfg, k) for k in ("algorithm", "updates_per_batch", "minibatch", "max_new_tokens", "temperature",
                                              "clip_low", "clip_high", "beta", "kl_estimator")}
    g = cfg.group_size

    for iteration in range(state["iteration"], cfg.iterations):
        rng = np.random.default_rng(cfg.seed + iteration)
        picked = [data[i] for i in rng.choice(len(data), cfg.prompts_per_iteration, replace=len(data) < cfg.prompts_per_iteration)]
        prompt_ids = [d["ids"] for d in picked]

        start = time.perf_counter()
        weights = ray.put(ray.get(learner.weights.remote()))
        state["rollout_restarts"] += sync(actors, replace_rollout, weights)
        sync_s = time.perf_counter() - start

        start = time.perf_counter()
        completion_ids, restarts = generate(cfg, actors, replace_rollout, weights, prompt_ids, cfg.seed * 1_000_003 + 1_000 * iteration)
        generation_s = time.perf_counter() - start
        state["rollout_restarts"] += restarts

        start = time.perf_counter()
        rows = [d for d in picked for _ in range(g)]  # prompt-major, as sampled
        ids = [p for p in prompt_ids for _ in range(g)]
        texts = [tokenizer.decode([t for t in c if t != eos], skip_special_tokens=True) for c in completion_ids]
        terms, problems = rewards(cfg, actors, functions, [d["prompt"] for d in rows], ids, texts, completion_ids,
                                  [d["reference"] for d in rows], [d["family"] for d in rows])
        if problems and cfg.on_bad_reward == "raise":
            i, name, reason = problems[0]
            raise RewardError(f"reward term {name!r} failed at iteration {iteration + 1} on completion {texts[i]!r} "
                              f"of prompt {rows[i]['prompt']!r}: {reason} (on_bad_reward: skip drops such groups)")
        total = torch.tensor(combine(terms, cfg.rewards)).reshape(-1, g)
        bad_groups = sorted({i // g for i, _, _ in problems})
        keep = [k for k in range(len(picked)) if k not in set(bad_groups)]
        state["skipped_groups"] += len(bad_groups)
        reward_s = time.perf_counter() - start
        if not keep:
            raise RewardError(f"iteration {iteration + 1}: every group had a failed reward ({problems[0][2]})")

        kept_rows = [k * g + j for k in keep for j in range(g)]
        advantages = group_advantages(total[keep], cfg.algorithm).reshape(-1)
        kept_prompts = [ids[i] for i in kept_rows]
        kept_completions = [completion_ids[i] for i in kept_rows]

        start = time.perf_counter()
        ref_logprobs = ray.get(reference.logprobs.remote(kept_prompts, kept_completions, cfg.temperature))
        reference_s = time.perf_counter() - start

        start = time.perf_counter()
        stats = ray.get(learner.train.remote(kept_prompts, kept_completions, advantages, ref_logprobs, train_cfg,
                                             cfg.seed + iteration))
        training_s = time.perf_counter() - start

        mask = pack(kept_prompts, kept_completions, pad)["mask"]
        metrics = {
            "iteration": iteration + 1,
            "reward": float(total[keep].mean()),
            **{f"reward_{name.replace(':', '.')}": float(np.nanmean(values)) if not all(map(math.isnan, values)) else math.nan
               for name, values in terms.items()},
            "reward_std": float(total[keep].std()),
            "equal_reward_groups": equal_groups(total[keep]),
            "response_length": float(mask.sum(1).mean()),
            "skipped_groups": float(state["skipped_groups"]),
            "rollout_restarts": float(state["rollout_restarts"]),
            **stats,
            "sync_s": sync_s, "generation_s": generation_s, "reward_s": reward_s, "reference_s": reference_s,
            "training_s": training_s,
        }
        state["iteration"] = iteration + 1
        state["history"].append(metrics)
        report(metrics, iteration + 1)
        if state["iteration"] % cfg.checkpoint_every == 0 or state["iteration"] == cfg.iterations:
            save_checkpoint(checkpoints, learner, state)
    return state
