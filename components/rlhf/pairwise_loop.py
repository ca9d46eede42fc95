"""The per-worker loop of the pairwise RLHF phases (reward model and DPO), top to bottom.

Every worker gets the same tokenized pairs and reads its own stride of a seeded permutation
(as in fine-tuning). A step scores chosen and rejected answers and pushes them apart:

- reward: a scalar head on the fine-tuned model; Bradley-Terry loss on the two scores.
- dpo: the policy's sequence log-ratio against the frozen reference; the DPO (or IPO) loss.
  With LoRA the reference is the same model with its adapter switched off, so it costs no
  second copy of the weights.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from components.core.parallel import wrap
from components.core.peft_methods import PromptTuningSettings, SelectiveSettings, apply_method, trainable_parameters
from components.core.preference import bradley_terry_loss, dpo_loss, per_token_nll, sequence_logprobs
from components.core.sft import pad_batch
from components.finetune.loop import batch_rows, mean_over_workers, save_and_report
from components.rlhf.config import DPOConfig, RewardConfig
from components.storage import localize

Encoded = tuple[list[int], list[int]]  # (input_ids, labels with -100 on the prompt)
EncodedPair = tuple[Encoded, Encoded]  # (chosen, rejected)


def build_reward_model(base_dir: str, seed: int):
    """The fine-tuned LM's body with a fresh scalar head: [B, T] ids -> [B, 1] score at the last non-pad token."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def build_policy(base_dir: str, cfg: DPOConfig):
    """The fine-tuned LM, with a LoRA adapter (method lora) or all weights trainable (method full)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(cfg.seed)
    if cfg.method == "lora":
        model = apply_method(model, "lora", cfg.lora, PromptTuningSettings(), SelectiveSettings(), tokenizer)
    return model, tokenizer


def pairwise_loop(config: dict) -> None:
    objective = config["objective"]
    cfg = (RewardConfig if objective == "reward" else DPOConfig).model_validate(config["cfg"])
    train: list[EncodedPair] = config["train_pairs"]
    test: list[EncodedPair] = config["test_pairs"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    # 1. The model: a reward head on the fine-tuned model, or the DPO policy (+ its frozen reference).
    base_dir = str(localize(config["base_dir"]))  # a copy on this node when the run's storage is an object store
    def build():
        if objective == "reward":
            return build_reward_model(base_dir, cfg.seed)
        return build_policy(base_dir, cfg)

    model, tokenizer = build()
    reference = None
    if objective == "dpo":
        reference = None if cfg.method == "lora" else AutoModelForCausalLM.from_pretrained(base_dir).to(device).eval()
    trainable, total = trainable_parameters(model)
    par = wrap(model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
               zero_stage=cfg.zero_stage, micro_batch=cfg.micro_batch_size)

    def margins(pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, chosen, rejected) of a batch of pairs: rewards [B] (reward model) or implicit DPO rewards [B]."""
        chosen = {k: v.to(device) for k, v in pad_batch([c for c, _ in pairs], tokenizer.pad_token_id).items()}
        rejected = {k: v.to(device) for k, v in pad_batch([r for _, r in pairs], tokenizer.pad_token_id).items()}
        if objective == "reward":
            c = par.model(input_ids=chosen["input_ids"], attention_mask=chosen["attention_mask"]).logits.squeeze(-1)
            r = par.model(input_ids=rejected["input_ids"], attention_mask=rejected["attention_mask"]).logits.squeeze(-1)
            return bradley_terry_loss(c, r), c.detach(), r.detach()
        policy = [sequence_logprobs(par.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
                  for b in (chosen, rejected)]
        with torch.no_grad(), (model.disable_adapter() if reference is None else contextlib.nullcontext()):
            frozen = model if reference is None else reference
            ref = [sequence_logprobs(frozen(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
                   for b in (chosen, rejected)]
        loss, chosen_reward, rejected_reward = dpo_loss(policy[0], policy[1], ref[0], ref[1], cfg.beta, cfg.loss)
        if cfg.nll_weight:
            loss = loss + cfg.nll_weight * per_token_nll(policy[0], chosen["labels"])
        return loss, chosen_reward, rejected_reward

    # 2. Resume from the last checkpoint, if Ray Train restarted us.
    progress, resumed_from = {"step": 0}, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            par.load(Path(directory) / "state")
            progress = json.loads((Path(directory) / "progress.json").read_text())
        resumed_from = progress["step"]
        if progress["step"] == cfg.max_steps:
            ray.train.report(progress["final_metrics"], checkpoint=checkpoint if rank == 0 else None)
            return

    # 3. Train: push the chosen answer's score above the rejected one's.
    window, window_start = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "steps": 0}, time.perf_counter()
    for step in range(progress["step"], cfg.max_steps):
        pairs = [train[i] for i in batch_rows(len(train), step, cfg.micro_batch_size, rank, world, cfg.seed)]
        loss, chosen, rejected = margins(pairs)
        par.backward(loss)
        grad_norm = par.step()
        window["loss"] += loss.item()
        window["accuracy"] += (chosen > rejected).float().mean().item()
        window["margin"] += (chosen - rejected).mean().item()
        window["steps"] += 1
        done = progress["step"] = step + 1
        last = done == cfg.max_steps
        if done % cfg.log_every and done % cfg.eval_every and done % cfg.checkpoint_every and not last:
            continue

        # 4. Report: loss and pair accuracy; held-out accuracy; a checkpoint; at the end, the export.
        metrics = {
            "step": done,
            "loss": mean_over_workers(window["loss"] / window["steps"]),
            "accuracy": mean_over_workers(window["accuracy"] / window["steps"]),
            "margin": mean_over_workers(window["margin"] / window["steps"]),
            "lr": par.lr(),
            "grad_norm": grad_norm,
            "pairs_per_s": cfg.micro_batch_size * world * window["steps"] / (time.perf_counter() - window_start),
            "trainable_params": trainable,
            "trainable_share": trainable / total,
        }
        if resumed_from is not None:
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if done % cfg.eval_every == 0 or last:
            metrics["test_accuracy"], metrics["test_loss"] = _held_out(margins, par.model, test, cfg.micro_batch_size, rank, world)
        if last:
            progress["final_metrics"] = metrics
            save_and_report(metrics, par, progress, rank, cfg.strategy, export=_export(par, build, objective, rank))
        elif done % cfg.checkpoint_every == 0:
            save_and_report(metrics, par, progress, rank, cfg.strategy)
        else:
            ray.train.report(metrics)
        window, window_start = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "steps": 0}, time.perf_counter()


@torch.no_grad()
def _held_out(margins, module, pairs: list[EncodedPair], size: int, rank: int, world: int) -> tuple[float, float]:
    """(accuracy, loss) over this worker's share of the held-out pairs, averaged over workers."""
    mine = pairs[rank::world][: max(1, len(pairs) // world)]
    correct, loss, count = 0.0, 0.0, 0
    module.eval()
    for start in range(0, len(mine), size):
        chunk = mine[start : start + size]
        batch_loss, chosen, rejected = margins(chunk)
        correct += (chosen > rejected).float().sum().item()
        loss += batch_loss.item() * len(chunk)
        count += len(chunk)
    module.train()
    return mean_over_workers(correct / count), mean_over_workers(loss / count)


def _export(par, build, objective: str, rank: int) -> Path | None:
    """Gather the weights (collective); rank 0 loads them into a fresh `build()` model and writes `model/`
    (and `adapter/` for a LoRA policy)."""
    weights = par.full_state_dict()
    if rank != 0:
        return None
    model, tokenizer = build()
    model.load_state_dict(weights, strict=False)  # a tied lm_head may be absent; it follows the embedding
    export = Path(tempfile.mkdtemp(prefix=f"{objective}-export-"))
    if hasattr(model, "merge_and_unload"):  # a LoRA policy: keep the adapter, ship the merged model
        model.save_pretrained(export / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(export / "model")
    tokenizer.save_pretrained(export / "model")
    return export
