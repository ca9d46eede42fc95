"""Ray wiring of `uses: grpo`: the role actors in one placement group, the loop, and the before/after scoring."""

from __future__ import annotations

import numpy as np
import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import storage, tracking, training
from components.artifact import Artifact, StepContext
from components.core.chat import prompt_ids
from components.core.metrics import exact_match
from components.core.ppo import pack
from components.core.verifiers import load_reward_function
from components.data.instructions import FAMILIES, OPT_IN_FAMILIES, Example, generate_tasks, read_examples_jsonl, spread
from components.grpo import loop
from components.grpo.config import REWARD_MODEL_TERM, GRPOConfig
from components.grpo.roles import Learner, Rollout
from components.report import plot_curves
from components.rlhf.roles import Reference, Reward
from components.scoring import AnswerMemo, greedy, reuse_tags


def rollout_count(cfg: GRPOConfig, cluster_cpus: float, with_reward_model: bool) -> int:
    """cfg.rollout_actors, fewer when the cluster's CPUs cannot also hold the learner, reference (and reward model); at least 1."""
    others = 2 + with_reward_model
    return max(1, min(cfg.rollout_actors, int(cluster_cpus / cfg.cpus_per_actor + 1e-9) - others))


def start_actors(cfg: GRPOConfig, model_dir: str, reward_dir: str | None, pg, rollouts: int):
    """({"learner", "reference", "rollouts": [...], "reward"?}, replace_rollout): one actor per placement-group bundle,
    in the order learner, reference, reward model (if any), rollouts."""
    threads = max(1, int(cfg.cpus_per_actor))
    lora = cfg.lora.model_dump()

    def place(cls, index: int):
        return ray.remote(cls).options(
            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        )

    actors = {"learner": place(Learner, 0).remote(model_dir, cfg.method, lora, cfg.lr, cfg.grad_clip, cfg.seed, threads),
              "reference": place(Reference, 1).remote(model_dir, threads)}
    first = 2
    if reward_dir is not None:
        actors["reward"] = place(Reward, 2).remote(reward_dir, threads)
        first = 3
    actors["rollouts"] = [place(Rollout, first + k).remote(model_dir, cfg.method, lora, cfg.seed, threads) for k in range(rollouts)]

    def replace_rollout(k: int, weights):
        ray.kill(actors["rollouts"][k])
        actor = place(Rollout, first + k).remote(model_dir, cfg.method, lora, cfg.seed, threads)
        ray.get(actor.set_weights.remote(weights))
        actors["rollouts"][k] = actor
        return actor

    return actors, replace_rollout


def paired(before: list[bool], after: list[bool]) -> dict[str, float]:
    """Exact match before and after on the same prompts, the gain and its paired standard error (fractions)."""
    b, a = np.asarray(before, float), np.asarray(after, float)
    diff = a - b
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"exact_match_before": float(b.mean()), "exact_match_after": float(a.mean()),
            "exact_match_gain": float(diff.mean()), "exact_match_gain_se": se,
            "exact_match_fixed": float((diff > 0).mean()), "exact_match_broken": float((diff < 0).mean())}


def hits(model_dir, tokenizer, examples: list[Example], max_new_tokens: int, memo: AnswerMemo | None = None) -> list[bool]:
    """Greedy answer of the model at model_dir to each example, exact or not (`memo`: its kept answers)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answers = greedy(model, tokenizer, [e.prompt for e in examples], max_new_tokens, memo)
    return [exact_match(a, e.response) for a, e in zip(answers, examples)]


def by_family(examples: list[Example], flags: list[bool], suffix: str) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for e, h in zip(examples, flags):
        out.setdefault(e.family, []).append(h)
    return {f"exact_match_{family}_{suffix}": float(np.mean(v)) for family, v in sorted(out.items())}


def training_examples(cfg: GRPOConfig, train: list[Example], instructions: Artifact) -> list[Example]:
    """The prompts to train on: the training split, or fresh ones from the bundled generators that no split holds."""
    if cfg.prompts == "train":
        return train
    families = sorted({e.family for e in train})
    unknown = [f for f in families if f not in FAMILIES and f not in OPT_IN_FAMILIES]
    if unknown:
        raise ValueError(f"prompts: fresh needs bundled task families; the instructions have {unknown}")
    seen = {e.prompt for split in ("train", "validation", "test") for e in read_examples_jsonl(instructions.path / f"{split}.jsonl")}
    fresh = generate_tasks(cfg.fresh_per_family, seed=cfg.seed + 7919, families=families)
    return [e for e in fresh if e.prompt not in seen]


def run(cfg: GRPOConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Group-relative RL of the fine-tuned model on its training prompts with verifiable rewards; returns the merged policy."""
    base = next(a for a in inputs.values() if a.kind == "model")
    name, instructions = next((n, a) for n, a in inputs.items() if a.kind == "instructions")
    reward_model = next((a for a in inputs.values() if a.kind == "reward_model"), None)
    if REWARD_MODEL_TERM in cfg.rewards and reward_model is None:
        raise ValueError(f"step '{ctx.step}': the reward term {REWARD_MODEL_TERM!r} needs a reward step in needs")
    functions = {n: load_reward_function(n) for n in cfg.user_functions}
    splits = {s: read_examples_jsonl(instructions.path / f"{s}.jsonl") for s in ("train", "test")}
    for split in splits:
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{name}/{split}", str(instructions.metrics.get(f"digest_{split}", "")),
                             instructions.uri, split, {"examples": len(splits[split])})
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    # The policy samples from the prompt as fine-tuning showed it (a chat template's rendering for a pretrained
    # chat model, see core/chat.py); reward functions get the Alpaca prompt, whose instruction they parse.
    data = [{"ids": prompt_ids(tokenizer, e.prompt), "prompt": e.prompt, "reference": e.response, "family": e.family}
            for e in training_examples(cfg, splits["train"], instructions)]
    test = spread(splits["test"], cfg.test_examples)
    memo = AnswerMemo.of(base.cache_key, ctx.storage_path, ctx.step)
    with ctx.timed("score_before"):
        before = hits(base.path, tokenizer, test, cfg.eval_max_new_tokens, memo)

    with_reward = REWARD_MODEL_TERM in cfg.rewards
    rollouts = rollout_count(cfg, ray.cluster_resources().get("CPU", 0), with_reward)
    bundle = {"CPU": cfg.cpus_per_actor, **({"GPU": cfg.gpus_per_actor} if cfg.gpus_per_actor else {})}
    n_bundles = 2 + with_reward + rollouts
    pg = training.reserve_actors(bundle, n_bundles, "GRPO", ctx)
    checkpoints = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}")  # depends only on the cache key: a re-run resumes

    def report(metrics: dict, iteration: int) -> None:
        tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics, step=iteration)
        ctx.progress({k: round(v, 3) for k, v in metrics.items() if k in ("iteration", "reward", "kl_response", "equal_reward_groups")})

    try:
        for attempt in range(cfg.max_failures + 1):
            actors, replace_rollout = start_actors(cfg, base.uri, reward_model.uri if with_reward else None, pg, rollouts)
            try:
                # Wait for every actor to load its model, so the first iteration's times are the loop's own.
                with ctx.timed("start_actors"):
                    ray.get([a.__ray_ready__.remote() for a in [actors["learner"], actors["reference"], *actors["rollouts"],
                                                                *([actors["reward"]] if with_reward else [])]])
                with ctx.timed("iterations"):
                    state = loop.train(cfg, actors, replace_rollout, data, tokenizer, functions, checkpoints, report)
                break
            except ray.exceptions.RayActorError:  # the learner, reference or reward model: all restart from the checkpoint
                for actor in [actors["learner"], actors["reference"], *actors["rollouts"], *([actors["reward"]] if with_reward else [])]:
                    ray.kill(actor)
                if attempt == cfg.max_failures:
                    raise
                ctx.progress({"restarts": attempt + 1})

        # KL paid on held-out prompts: one sampled completion each, log pi - log pi_ref summed over it.
        test_ids = [prompt_ids(tokenizer, e.prompt) for e in test]
        ray.get(actors["rollouts"][0].set_weights.remote(ray.get(actors["learner"].weights.remote())))
        sampled = ray.get(actors["rollouts"][0].generate.remote(test_ids, 1, cfg.max_new_tokens, cfg.temperature, cfg.seed))
        policy_lp, ref_lp = ray.get([actors["learner"].logprobs.remote(test_ids, sampled, cfg.temperature),
                                     actors["reference"].logprobs.remote(test_ids, sampled, cfg.temperature)])
        test_kl = float(((policy_lp - ref_lp) * pack(test_ids, sampled, tokenizer.pad_token_id)["mask"]).sum(1).mean())
        export = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}-export")
        ray.get(actors["learner"].export.remote(export))
        storage.download(export, ctx.output_dir)
        storage.remove(export)
    finally:
        remove_placement_group(pg)

    with ctx.timed("score_after"):
        # Kept under this model's key: its evaluate step reuses the answers instead of generating them again.
        after = hits(ctx.output_dir, tokenizer, test, cfg.eval_max_new_tokens, AnswerMemo.of(ctx.cache_key, ctx.storage_path, ctx.step))
    history = state["history"]
    split = {key: float(np.mean([h[key] for h in history])) for key in ("sync_s", "generation_s", "reward_s", "reference_s", "training_s")}
    metrics = {
        **paired(before, after), **by_family(test, before, "before"), **by_family(test, after, "after"),
        "kl_to_reference": test_kl, "reward_first": history[0]["reward"], "reward_last": history[-1]["reward"],
        "rollout_actors": float(rollouts), "skipped_groups": float(state["skipped_groups"]),
        "rollout_restarts": float(state["rollout_restarts"]),
        **{f"iteration_{k}": v for k, v in split.items()},
        "generation_share": split["generation_s"] / max(sum(split.values()), 1e-9),
    }
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, reuse_tags(before=memo))
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, history, "grpo_iterations.json")
    terms = tuple(f"reward_{n.replace(':', '.')}" for n in cfg.rewards)
    plot_curves(ctx, keys=("reward", *terms, "kl_response", "equal_reward_groups"), ylabel="reward / KL (nats) / share",
                artifact_file="reward_kl.png")
    plot_curves(ctx, keys=("generation_s", "reward_s", "reference_s", "training_s"), ylabel="seconds per iteration",
                artifact_file="time_split.png")
    headline = (f"{cfg.algorithm}: exact match {metrics['exact_match_before']:.1%} -> {metrics['exact_match_after']:.1%} "
                f"({metrics['exact_match_gain']:+.1%} +- {metrics['exact_match_gain_se']:.1%} paired SE) for KL {test_kl:.2f} nats")
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)

