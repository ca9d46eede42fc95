"""The GRPO roles as Ray actors: rollout (several), learner, and the frozen reference.

- Rollout: a copy of the policy that samples G completions per prompt; it takes the
  learner's new trainable weights (the LoRA adapter, or all weights under full fine-tuning)
  at the start of every iteration, so it always samples from the policy being trained.
- Learner: the policy with its optimiser; the old log-probabilities, then several clipped
  updates per batch (components/core/grpo.py), checkpoint save/load, and the export.
- Reference: the frozen fine-tuned model, components/rlhf/roles.py's `Reference` as it is
  (its log-probabilities anchor the KL term); the reward model term uses that file's `Reward`.

No value model: the group is the baseline. Rollouts travel as token lists, prompts [B][P_i]
and completions [B][R_i] (eos included when generated), packed by `core.ppo.pack`. Models
stay in eval mode while training, as in PPO: dropout would make the first ratio differ from 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import storage
from components.core.grpo import grpo_loss
from components.core.peft_methods import LoraSettings, PromptTuningSettings, SelectiveSettings, apply_method
from components.core.ppo import at_response, entropy, pack, token_logprobs


def build_policy(model_dir: str, method: str, lora: dict, seed: int):
    """(model, tokenizer): the fine-tuned LM, with a LoRA adapter (seeded, so every copy starts equal) or all weights trainable."""
    model_dir = str(storage.localize(model_dir))  # a copy on this node when the run's storage is an object store
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if method == "lora":
        model = apply_method(model, "lora", LoraSettings(**lora), PromptTuningSettings(), SelectiveSettings(), tokenizer)
    return model.eval(), tokenizer


def sample(model, tokenizer, prompts: list[list[int]], group_size: int, max_new_tokens: int, temperature: float,
           seed: int) -> list[list[int]]:
    """group_size completions per prompt, prompt-major ([p0 x G, p1 x G, ...]), in one batched generate;
    each cut after its first eos."""
    torch.manual_seed(seed)
    rows = [p for p in prompts for _ in range(group_size)]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    completions = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        completions.append(row or [tokenizer.eos_token_id])
    return completions


def response_logprobs(model, prompts, completions, pad_id: int, temperature: float):
    """(log pi(token), entropy, mask), each [B, R], under the sampling temperature."""
    batch = pack(prompts, completions, pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = at_response(logits, batch["index"]) / temperature
    return token_logprobs(logits, batch["tokens"]), entropy(logits), batch["mask"]


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _set_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


class Rollout:
    """A sampling copy of the policy."""

    def __init__(self, model_dir: str, method: str, lora: dict, seed: int, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, self.tokenizer = build_policy(model_dir, method, lora, seed)
        self.model.requires_grad_(False)

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The learner's trainable weights (names as in its model)."""
        unknown = set(weights) - set(dict(self.model.named_parameters()))
        if unknown:
            raise KeyError(f"weights the rollout model lacks: {sorted(unknown)[:3]}")
        _set_trainable(self.model, weights)

    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int, temperature: float, seed: int):
        return sample(self.model, self.tokenizer, prompts, group_size, max_new_tokens, temperature, seed)

    def ping(self) -> bool:
        return True


class Learner:
    """The policy being trained: clipped group-relative updates, checkpoints and the export."""

    def __init__(self, model_dir: str, method: str, lora: dict, lr: float, grad_clip: float, seed: int, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, self.tokenizer = build_policy(model_dir, method, lora, seed)
        self.method = method
        self.optimizer = torch.optim.AdamW(list(_trainable(self.model).values()), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.grad_clip = grad_clip

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights, for the rollout actors."""
        return {n: p.detach().clone() for n, p in _trainable(self.model).items()}

    @torch.no_grad()
    def logprobs(self, prompts, completions, temperature: float) -> torch.Tensor:
        return response_logprobs(self.model, prompts, completions, self.tokenizer.pad_token_id, temperature)[0]

    def train(self, prompts, completions, advantages: torch.Tensor, ref_logprobs: torch.Tensor | None, cfg: dict,
              seed: int) -> dict[str, float]:
        """cfg["updates_per_batch"] passes of minibatch steps; mean loss, clip fraction, KL (the estimator's mean per
        token), entropy (nats per token), grad norm, and kl_response (nats per completion, k1 summed, before the updates).

        advantages [B], one per completion; ref_logprobs [B, R] or None (beta 0). The old
        log-probabilities are this model's before the first step.
        """
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            old, _, full_mask = response_logprobs(self.model, prompts, completions, pad, cfg["temperature"])
        # KL paid by the sampled completions (log pi - log pi_ref summed over each), before this batch's updates
        sampled_kl = float(((old - ref_logprobs) * full_mask).sum(1).mean()) if ref_logprobs is not None else 0.0
        generator = torch.Generator().manual_seed(seed)
        sums = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0, "grad_norm": 0.0}
        steps = 0
        params = list(_trainable(self.model).values())
        for _ in range(cfg["updates_per_batch"]):
            order = torch.randperm(len(prompts), generator=generator).tolist()
            for start in range(0, len(order), cfg["minibatch"]):
                rows = order[start : start + cfg["minibatch"]]
                logprobs, ent, mask = response_logprobs(self.model, [prompts[i] for i in rows], [completions[i] for i in rows],
                                                        pad, cfg["temperature"])
                reach = mask.shape[1]
                ref = ref_logprobs[rows, :reach] if ref_logprobs is not None else None
                loss, stats = grpo_loss(logprobs, old[rows, :reach], ref, advantages[rows], mask, cfg["algorithm"],
                                        cfg["clip_low"], cfg["clip_high"], cfg["beta"], cfg["kl_estimator"], cfg["max_new_tokens"])
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                sums["loss"] += loss.item()
                sums["clip_fraction"] += stats["clip_fraction"].item()
                sums["kl"] += stats["kl"].item()
                sums["entropy"] += float((ent.detach() * mask).sum() / mask.sum().clamp(min=1))
                sums["grad_norm"] += float(norm)
                steps += 1
        return {**{k: v / steps for k, v in sums.items()}, "kl_response": sampled_kl}

    def save(self, uri: str) -> None:
        """Trainable weights and their AdamW state as safetensors (nothing pickled)."""
        with storage.writing(uri) as directory:
            named = _trainable(self.model)
            save_file({n: p.detach().contiguous() for n, p in named.items()}, directory / "weights.safetensors")
            names = {id(p): n for n, p in named.items()}
            state = {f"{names[id(p)]}::{k}": v.reshape(-1) if v.dim() == 0 else v.contiguous()
                     for p, s in self.optimizer.state.items() for k, v in s.items()}
            save_file(state, directory / "optimizer.safetensors")

    def load(self, uri: str) -> None:
        directory = storage.localize(uri)
        _set_trainable(self.model, load_file(Path(directory) / "weights.safetensors"))
        params = dict(self.model.named_parameters())
        for key, value in load_file(Path(directory) / "optimizer.safetensors").items():
            name, _, field = key.rpartition("::")
            self.optimizer.state[params[name]][field] = value.reshape(()) if field == "step" else value

    def export(self, uri: str) -> None:
        """The merged model with its tokenizer in Hugging Face format (and `adapter/` under LoRA)."""
        with storage.writing(uri) as directory:
            model = self.model
            if self.method == "lora":
                model.save_pretrained(directory / "adapter")
                model = model.merge_and_unload()
            model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
