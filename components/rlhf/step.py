"""Ray wiring of the RLHF phases: reward model and DPO (Ray Train runs), PPO (four role actors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from components import storage, tracking, training
from components.artifact import Artifact, StepContext
from components.core.chat import answer_end_id, prompt_ids
from components.core.metrics import exact_match
from components.core.models import context_length
from components.core.ppo import pack
from components.core.preference import sequence_logprobs
from components.core.sft import encode_pair, pad_batch
from components.data.instructions import Example
from components.data.preferences import PreferencePair, read_pairs_jsonl
from components.report import plot_curves
from components.rlhf import ppo_loop
from components.rlhf.config import DPOConfig, PPOConfig, RewardConfig
from components.rlhf.pairwise_loop import build_reward_model, pairwise_loop
from components.rlhf.roles import Policy, Reference, Reward, Value
from components.scoring import AnswerMemo, exact_match_by_family, reuse_tags

# --- shared -------------------------------------------------------------------------------


def _inputs(inputs: dict[str, Artifact], ctx: StepContext) -> tuple[Artifact, dict[str, list[PreferencePair]], Path]:
    """(fine-tuned model, {train, test} pairs, preferences dir); the pairs' datasets logged for lineage."""
    model = next(a for a in inputs.values() if a.kind == "model")
    name, prefs = next((n, a) for n, a in inputs.items() if a.kind == "preferences")
    pairs = {s: read_pairs_jsonl(prefs.path / f"{s}.jsonl") for s in ("train", "test")}
    for split in pairs:
        tracking.log_dataset(ctx.tracking_uri, ctx.run_id, f"{name}/{split}", str(prefs.metrics.get(f"digest_{split}", "")),
                             prefs.uri, split, {"pairs": len(pairs[split])})
    return model, pairs, prefs.path


def _tokenized(inputs: dict[str, Artifact], ctx: StepContext, max_length: int | None):
    """(fine-tuned model, {train, test} pairs, its tokenizer, the pairs encoded by `_encode`)."""
    base, pairs, prefs_dir = _inputs(inputs, ctx)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    context = context_length(AutoConfig.from_pretrained(base.path))
    context = min(context, max_length or context)
    return base, pairs, tokenizer, {s: _encode(pairs[s], tokenizer, context, prefs_dir / f"{s}.jsonl") for s in pairs}


def _encode(pairs: list[PreferencePair], tokenizer, context: int, path: Path):
    """((chosen ids, labels), (rejected ids, labels)) per pair; a pair longer than the context is an error naming its line."""
    encoded = []
    for line, p in enumerate(pairs, start=1):
        chosen, rejected = encode_pair(tokenizer, p.prompt, p.chosen), encode_pair(tokenizer, p.prompt, p.rejected)
        longest = max(len(chosen[0]), len(rejected[0]))
        if longest > context:
            raise ValueError(f"{path}:{line}: prompt + answer is {longest} tokens, more than the model's context of {context}")
        encoded.append((chosen, rejected))
    return encoded


def _by_kind(hits: list[bool], pairs: list[PreferencePair], prefix: str) -> dict[str, float]:
    """Share of hits over all pairs and per rejected-answer kind (bundled data)."""
    out = {prefix: float(np.mean(hits))}
    for kind in sorted({p.kind for p in pairs if p.kind}):
        kind_hits = [h for h, p in zip(hits, pairs) if p.kind == kind]
        out[f"{prefix}_{kind}"] = float(np.mean(kind_hits))
    return out


@torch.no_grad()
def score_pairs(model, tokenizer, pairs: list[PreferencePair], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the chosen and of the rejected answers: two [N] arrays.

    A reward model (one output per sequence) gives its scalar score; a causal LM gives
    log p(answer | prompt) summed over the answer's tokens, eos included (nats).
    """
    out = {"chosen": [], "rejected": []}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        for side in out:
            batch = pad_batch([encode_pair(tokenizer, p.prompt, getattr(p, side)) for p in chunk], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out[side].append(logits.squeeze(-1) if logits.dim() == 2 else sequence_logprobs(logits, batch["labels"]))
    return torch.cat(out["chosen"]).numpy(), torch.cat(out["rejected"]).numpy()


def _examples(pairs: list[PreferencePair]) -> list[Example]:
    """Held-out prompts with their preferred answer as the reference (for exact match), one per prompt."""
    unique = {p.prompt: Example(p.family, p.prompt, p.chosen) for p in pairs}
    return list(unique.values())


def _copy_export(export: Path, output_dir: Path) -> None:
    shutil.copytree(export / "model", output_dir, dirs_exist_ok=True)
    if (export / "adapter").exists():
        shutil.copytree(export / "adapter", output_dir / "adapter")
    shutil.rmtree(export)


# --- reward model ---------------------------------------------------------------------------


def run_reward(cfg: RewardConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Train a reward model (scalar head on the fine-tuned model, Bradley-Terry loss); held-out pair accuracy before/after."""
    base, pairs, tokenizer, encoded = _tokenized(inputs, ctx, cfg.max_length)
    test = pairs["test"][: cfg.test_pairs]

    def judge(model, suffix: str) -> dict[str, float]:
        """Held-out pair accuracy, overall and per kind, and the mean scores."""
        chosen, rejected = score_pairs(model, tokenizer, test)
        scores = _by_kind(list(chosen > rejected), test, f"test_accuracy{suffix}")
        scores.update({f"test_margin{suffix}": float(np.mean(chosen - rejected)),
                       f"score_chosen{suffix}": float(np.mean(chosen)), f"score_rejected{suffix}": float(np.mean(rejected))})
        return scores

    with ctx.timed("score_before"):
        untrained, _ = build_reward_model(str(base.path), cfg.seed)
        before = judge(untrained.eval(), "_before")
    del untrained

    loop_config = {"objective": "reward", "cfg": cfg.model_dump(), "base_dir": base.uri,
                   "train_pairs": encoded["train"], "test_pairs": encoded["test"][: cfg.test_pairs]}
    _copy_export(training.fit(pairwise_loop, loop_config, ctx, cfg.max_failures, ("step", "loss", "accuracy", "test_accuracy")), ctx.output_dir)

    with ctx.timed("score_after"):
        after = judge(AutoModelForSequenceClassification.from_pretrained(ctx.output_dir).eval(), "")
    metrics = {**before, **after}
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    plot_curves(ctx, keys=("loss", "test_loss"), ylabel="Bradley-Terry loss (nats)")
    plot_curves(ctx, keys=("accuracy", "test_accuracy"), ylabel="pair accuracy", artifact_file="accuracy_curve.png")
    headline = f"held-out pair accuracy {before['test_accuracy_before']:.0%} -> {after['test_accuracy']:.0%}"
    return Artifact(str(ctx.output_dir), "reward_model", ctx.run_id, ctx.cache_key, metrics, headline)


# --- DPO ----------------------------------------------------------------------------------------


def run_dpo(cfg: DPOConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """DPO (or IPO) of the fine-tuned model on preference pairs; preference accuracy and exact match before/after."""
    base, pairs, tokenizer, encoded = _tokenized(inputs, ctx, cfg.max_length)
    test = pairs["test"][: cfg.test_pairs]
    examples = _examples(pairs["test"])[: cfg.test_pairs]

    memos = {"before": AnswerMemo.of(base.cache_key, ctx.storage_path, ctx.step), "after": AnswerMemo.of(ctx.cache_key, ctx.storage_path, ctx.step)}

    def judge(model, suffix: str) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        chosen, rejected = score_pairs(model, tokenizer, test)
        em = exact_match_by_family(model, tokenizer, examples, cfg.max_new_tokens, memos[suffix])
        scores = {**_by_kind(list(chosen > rejected), test, f"preference_accuracy_{suffix}"),
                  f"exact_match_{suffix}": em["all"], f"chosen_logprob_{suffix}": float(np.mean(chosen))}
        return scores, chosen, rejected

    with ctx.timed("score_before"):
        reference = AutoModelForCausalLM.from_pretrained(base.path).eval()
        before, ref_chosen, ref_rejected = judge(reference, "before")
    del reference

    loop_config = {"objective": "dpo", "cfg": cfg.model_dump(), "base_dir": base.uri,
                   "train_pairs": encoded["train"], "test_pairs": encoded["test"][: cfg.test_pairs]}
    _copy_export(training.fit(pairwise_loop, loop_config, ctx, cfg.max_failures, ("step", "loss", "accuracy", "test_accuracy")), ctx.output_dir)

    with ctx.timed("score_after"):
        tuned = AutoModelForCausalLM.from_pretrained(ctx.output_dir).eval()
        after, chosen, rejected = judge(tuned, "after")
    # The implicit reward's accuracy: does the log-ratio against the reference prefer the chosen answer?
    # A tie counts half. It has no "before": the reference's log-ratio against itself is 0 on every
    # pair, so its accuracy would be 0.5 by construction; the paired log-prob accuracy is the before/after.
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    wins = (margin > 0) + 0.5 * (margin == 0)
    metrics = {**before, **after, "reward_accuracy_after": float(np.mean(wins)),
               "reward_accuracy_after_se": float(np.std(wins) / np.sqrt(len(wins)))}
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, reuse_tags(**memos))
    plot_curves(ctx, keys=("loss", "test_loss"), ylabel=f"{cfg.loss} loss")
    headline = (f"preference accuracy {before['preference_accuracy_before']:.0%} -> {after['preference_accuracy_after']:.0%} "
                f"(log-ratio {metrics['reward_accuracy_after']:.0%}), "
                f"exact match {before['exact_match_before']:.0%} -> {after['exact_match_after']:.0%}")
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)


# --- PPO -------------------------------------------------------------------------------------------


def _start_roles(cfg: PPOConfig, model_dir: str, reward_dir: str, pg) -> dict:
    """The four actors, one per bundle of the placement group."""
    threads = max(1, int(cfg.cpus_per_role))

    def place(cls, index: int):
        return ray.remote(cls).options(
            num_cpus=cfg.cpus_per_role, num_gpus=cfg.gpus_per_role, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        )

    return {
        "policy": place(Policy, 0).remote(model_dir, cfg.lora.model_dump(), cfg.lr, cfg.grad_clip, cfg.seed, threads),
        "reference": place(Reference, 1).remote(model_dir, threads),
        "reward": place(Reward, 2).remote(reward_dir, threads),
        "value": place(Value, 3).remote(reward_dir, cfg.value_lr, cfg.grad_clip, threads),
    }


def _judge(roles: dict, actor: str, prompts: list[list[int]], examples: list[Example], tokenizer, max_new_tokens: int) -> dict:
    """Greedy answers of one role on held-out prompts: reward-model scores ([N] array and mean) and exact match."""
    answers = ray.get(roles[actor].generate.remote(prompts, max_new_tokens, 0.0, 0))
    scores = ray.get(roles["reward"].score.remote(prompts, answers)).numpy()
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    hits = [exact_match(t, e.response) for t, e in zip(texts, examples)]
    return {"reward": float(scores.mean()), "scores": scores, "exact_match": float(np.mean(hits))}


def run_ppo(cfg: PPOConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """PPO of the fine-tuned model against the reward model with a KL penalty; returns the merged policy (adapter in adapter/)."""
    base, pairs, _ = _inputs(inputs, ctx)
    reward_model = next(a for a in inputs.values() if a.kind == "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    # Prompts rendered as the policy and the reward model were trained on them (encode_pair: a chat
    # template's user turn and assistant header for a pretrained chat model); answers as they are.
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [prompt_ids(tokenizer, p) for p in dict.fromkeys(p.prompt for p in pairs["train"])]
    # PPO-ptx's demonstrations: each training prompt with its preferred answer (the fine-tuning target).
    demos = [(prompt_ids(tokenizer, prompt), encode(chosen) + [answer_end_id(tokenizer)])
             for prompt, chosen in {p.prompt: p.chosen for p in pairs["train"]}.items()]
    examples = _examples(pairs["test"])[: cfg.test_prompts]
    test_prompts = [prompt_ids(tokenizer, e.prompt) for e in examples]

    # The four roles, packed together when they fit (one node if possible).
    bundle = {"CPU": cfg.cpus_per_role, **({"GPU": cfg.gpus_per_role} if cfg.gpus_per_role else {})}
    pg = training.reserve_actors(bundle, 4, "PPO", ctx)
    checkpoints = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}")  # depends only on the cache key: a re-run resumes

    def report(metrics: dict, iteration: int) -> None:
        tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics, step=iteration)
        ctx.progress({k: round(v, 3) for k, v in metrics.items() if k in ("iteration", "reward", "kl", "kl_coef")})

    try:
        for attempt in range(cfg.max_failures + 1):
            roles = _start_roles(cfg, base.uri, reward_model.uri, pg)
            try:
                with ctx.timed("start_actors"):  # the roles load their models
                    fingerprint = ray.get(roles["reference"].fingerprint.remote())
                with ctx.timed("score_before"):
                    before = _judge(roles, "reference", test_prompts, examples, tokenizer, cfg.eval_max_new_tokens)
                with ctx.timed("iterations"):
                    state = ppo_loop.train(cfg, roles, prompts, tokenizer.pad_token_id, checkpoints, report, demos)
                break
            except ray.exceptions.RayActorError:
                for actor in roles.values():
                    ray.kill(actor)
                if attempt == cfg.max_failures:
                    raise
                ctx.progress({"restarts": attempt + 1})  # every role restarts and reloads the last checkpoint

        with ctx.timed("score_after"):
            after = _judge(roles, "policy", test_prompts, examples, tokenizer, cfg.eval_max_new_tokens)
        # KL paid: sampled responses to held-out prompts, log pi - log pi_ref summed over each response.
        sampled = ray.get(roles["policy"].generate.remote(test_prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed))
        policy_lp, ref_lp = ray.get([roles["policy"].logprobs.remote(test_prompts, sampled, cfg.temperature),
                                     roles["reference"].logprobs.remote(test_prompts, sampled, cfg.temperature)])
        test_kl = float(((policy_lp - ref_lp) * pack(test_prompts, sampled, tokenizer.pad_token_id)["mask"]).sum(1).mean())
        unchanged = ray.get(roles["reference"].fingerprint.remote()) == fingerprint
        # The policy's actor may be on another node: it writes into the run's storage, read back here.
        export = storage.join(ctx.storage_path, f"{ctx.step}-{ctx.cache_key[:16]}-export")
        ray.get(roles["policy"].export.remote(export))
        storage.download(export, ctx.output_dir)
        storage.remove(export)
    finally:
        remove_placement_group(pg)

    history = state["history"]
    generation = float(np.mean([h["generation_s"] for h in history]))
    training_s = float(np.mean([h["training_s"] for h in history]))
    scoring = float(np.mean([h["scoring_s"] for h in history]))
    # Paired over the same held-out prompts: the gain's standard error and how often the policy's answer scores higher.
    gain = after["scores"] - before["scores"]
    metrics = {
        "reward_before": before["reward"], "reward_after": after["reward"],
        "reward_gain_se": float(gain.std(ddof=1) / np.sqrt(len(gain))), "reward_win_rate": float(np.mean(gain > 0)),
        "exact_match_before": before["exact_match"], "exact_match_after": after["exact_match"],
        "kl_to_reference": test_kl, "reference_unchanged": float(unchanged),
        "iteration_generation_s": generation, "iteration_scoring_s": scoring, "iteration_training_s": training_s,
        "generation_share": generation / (generation + scoring + training_s),
    }
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, history, "ppo_iterations.json")
    plot_curves(ctx, keys=("reward", "kl"), ylabel="reward-model score / KL (nats)", artifact_file="reward_kl.png")
    headline = (f"reward {before['reward']:.2f} -> {after['reward']:.2f} (+-{metrics['reward_gain_se']:.2f}) for KL {test_kl:.2f} nats, "
                f"exact match {before['exact_match']:.0%} -> {after['exact_match']:.0%}")
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)
