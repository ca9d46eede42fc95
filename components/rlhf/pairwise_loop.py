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

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from components.core.parallel import wrap
from components.core.peft_methods import PromptTuningSettings, SelectiveSettings, apply_method, trainable_parameters
from components.core.preference import bradley_terry_loss, dpo_loss, per_token_nll, sequence_logprobs
from components.core.sft import pad_batch
from components.rlhf.config import DPOConfig, RewardConfig
from components.storage import localize
from components.train_loop import Run, batch_rows, export_model, mean_over_workers, worker

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
    rank, world, device = worker()

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
    run = Run(cfg, par, rank, "pairs_per_s", cfg.micro_batch_size * world)
    if run.resume():
        return

    # 3. Train: push the chosen answer's score above the rejected one's.
    for step in run.steps():
        pairs = [train[i] for i in batch_rows(len(train), step, cfg.micro_batch_size, rank, world, cfg.seed)]
        loss, chosen, rejected = margins(pairs)
        par.backward(loss)
        run.record(par.step(), loss=loss.item(), accuracy=(chosen > rejected).float().mean().item(),
                   margin=(chosen - rejected).mean().item())
        if not run.report_due():
            continue

        # 4. Report: loss and pair accuracy; held-out accuracy; a checkpoint; at the end, the export
        #    (`model/`, and `adapter/` for a LoRA policy).
        metrics = run.metrics(trainable_params=trainable, trainable_share=trainable / total)
        if run.eval_due():
            metrics["test_accuracy"], metrics["test_loss"] = _held_out(margins, par.model, test, cfg.micro_batch_size, rank, world)
        run.report(metrics, export_model(par, rank, build, objective) if run.last else None)


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
