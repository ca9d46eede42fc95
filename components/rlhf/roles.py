"""The four PPO roles as Ray actors, each holding one model (the layout of verl and OpenRLHF).

- Policy: the fine-tuned LM with a LoRA adapter; samples rollouts and takes the clipped PPO step.
- Reference: the same fine-tuned LM, frozen; its log-probabilities anchor the KL penalty.
- Reward: the reward model; one scalar score per finished response.
- Value: the critic, a per-token value head on the reward model's body (its head starts as
  the reward head, so early values are already on the reward's scale).

Why by hand and not TRL's PPOTrainer: TRL's trainer owns one process (Accelerate) that holds
all four models and its own loop; here each model lives in its own actor, so the roles can be
placed, sized and restarted independently, and the loop (components/rlhf/ppo_loop.py) stays
readable. The losses are the pure functions of components/core/ppo.py; LoRA is peft's.

Rollouts travel as token lists: `prompts` [B][P_i] and `responses` [B][R_i] (eos included
when generated); each actor packs them with `core.ppo.pack`. Models run in eval mode even
while training: dropout would make the PPO ratio differ from 1 before any update.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from components import storage
from components.core.models import label_head
from components.core.peft_methods import LoraSettings, PromptTuningSettings, SelectiveSettings, apply_method
from components.core.ppo import at_response, entropy, masked_mean, pack, policy_loss, token_logprobs, value_loss


def _generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    """One response per prompt: sampled at `temperature` (greedy when 0), cut after the first eos."""
    torch.manual_seed(seed)
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling)
    responses = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]  # the eos is the action that ends the episode
        responses.append(row or [tokenizer.eos_token_id])
    return responses


def _logprobs(model, prompts, responses, pad_id: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log pi(response token), entropy, mask), each [B, R], under the sampling temperature."""
    batch = pack(prompts, responses, pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = at_response(logits, batch["index"]) / max(temperature, 1e-6)
    return token_logprobs(logits, batch["tokens"]), entropy(logits), batch["mask"]


def _minibatches(n: int, size: int, epochs: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        yield from (order[i : i + size] for i in range(0, n, size))


def _save_trainable(model, optimizer, directory: Path) -> None:
    """Trainable weights and their AdamW state as safetensors (nothing pickled)."""
    directory.mkdir(parents=True, exist_ok=True)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    save_file({n: p.detach().contiguous() for n, p in named.items()}, directory / "weights.safetensors")
    names = {id(p): n for n, p in named.items()}
    state = {f"{names[id(p)]}::{k}": v.reshape(-1) if v.dim() == 0 else v
             for p, s in optimizer.state.items() for k, v in s.items()}
    save_file(state, directory / "optimizer.safetensors")


def _load_trainable(model, optimizer, directory: Path) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(directory / "weights.safetensors").items():
            params[name].copy_(value)
    for key, value in load_file(directory / "optimizer.safetensors").items():
        name, _, field = key.rpartition("::")
        optimizer.state[params[name]][field] = value.reshape(()) if field == "step" else value


class Policy:
    """The fine-tuned LM plus a LoRA adapter: generate, score its own tokens, take PPO steps."""

    def __init__(self, model_dir: str, lora: dict, lr: float, grad_clip: float, seed: int, threads: int = 1):
        model_dir = str(storage.localize(model_dir))  # a copy on this node when the run's storage is an object store
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        torch.manual_seed(seed)
        self.model = apply_method(AutoModelForCausalLM.from_pretrained(model_dir), "lora", LoraSettings(**lora),
                                  PromptTuningSettings(), SelectiveSettings(), self.tokenizer).eval()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95))
        self.grad_clip = grad_clip

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        return _generate(self.model, self.tokenizer, prompts, max_new_tokens, temperature, seed)

    @torch.no_grad()
    def logprobs(self, prompts, responses, temperature: float) -> torch.Tensor:
        """[B, R] log-probabilities of the responses' tokens under the current policy."""
        return _logprobs(self.model, prompts, responses, self.tokenizer.pad_token_id, temperature)[0]

    def train(self, prompts, responses, old_logprobs: torch.Tensor, advantages: torch.Tensor, temperature: float,
              epochs: int, minibatch: int, clip: float, seed: int, demos: tuple[list, list] | None = None,
              ptx_coef: float = 0.0) -> dict[str, float]:
        """`epochs` passes of clipped-surrogate steps over the rollout; mean loss, clip fraction, entropy, approx KL.

        demos: (prompts, answers) of the training data, one per rollout; with ptx_coef > 0 each step also
        lowers their NLL (PPO-ptx), on the rows of the minibatch.
        """
        sums = {"policy_loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "approx_kl": 0.0, "ptx_nll": 0.0}
        steps = 0
        for rows in _minibatches(len(prompts), minibatch, epochs, seed):
            logprobs, ent, mask = _logprobs(self.model, [prompts[i] for i in rows], [responses[i] for i in rows],
                                            self.tokenizer.pad_token_id, temperature)
            reach = mask.shape[1]
            old, adv = old_logprobs[rows, :reach], advantages[rows, :reach]
            loss, clipped = policy_loss(logprobs, old, adv, mask, clip)
            if ptx_coef > 0 and demos is not None:
                demo_lp, _, demo_mask = _logprobs(self.model, [demos[0][i] for i in rows], [demos[1][i] for i in rows],
                                                  self.tokenizer.pad_token_id, 1.0)
                nll = -masked_mean(demo_lp, demo_mask)
                loss = loss + ptx_coef * nll
                sums["ptx_nll"] += nll.item()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            sums["policy_loss"] += loss.item()
            sums["clip_fraction"] += clipped.item()
            sums["entropy"] += masked_mean(ent, mask).item()
            sums["approx_kl"] += masked_mean(old - logprobs.detach(), mask).item()
            steps += 1
        return {k: v / steps for k, v in sums.items()}

    def save(self, uri: str) -> None:
        with storage.writing(uri) as directory:  # on this actor's node; uploaded when storage is an object store
            _save_trainable(self.model, self.optimizer, directory)

    def load(self, uri: str) -> None:
        _load_trainable(self.model, self.optimizer, storage.localize(uri))

    def export(self, uri: str) -> None:
        """`adapter/` (the LoRA weights) and the merged model with its tokenizer, in Hugging Face format."""
        with storage.writing(uri) as directory:
            self.model.save_pretrained(directory / "adapter")
            merged = self.model.merge_and_unload()
            merged.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)


class Reference:
    """The frozen fine-tuned LM: log-probabilities for the KL penalty, and the before-PPO answers."""

    def __init__(self, model_dir: str, threads: int = 1):
        model_dir = str(storage.localize(model_dir))  # a copy on this node when the run's storage is an object store
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval().requires_grad_(False)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        return _generate(self.model, self.tokenizer, prompts, max_new_tokens, temperature, seed)

    @torch.no_grad()
    def logprobs(self, prompts, responses, temperature: float) -> torch.Tensor:
        return _logprobs(self.model, prompts, responses, self.tokenizer.pad_token_id, temperature)[0]

    def fingerprint(self) -> float:
        """Sum of all weights: equal before and after PPO when the reference stayed frozen."""
        return float(sum(p.double().sum() for p in self.model.parameters()))


class Reward:
    """The reward model: one score per (prompt, response), read at the response's last token."""

    def __init__(self, model_dir: str, threads: int = 1):
        model_dir = str(storage.localize(model_dir))  # a copy on this node when the run's storage is an object store
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, prompts, responses) -> torch.Tensor:
        """[B] scores."""
        batch = pack(prompts, responses, self.tokenizer.pad_token_id)
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)


class Value:
    """The critic: V(prompt, response so far) for every response position."""

    def __init__(self, reward_dir: str, lr: float, grad_clip: float, threads: int = 1):
        reward_dir = str(storage.localize(reward_dir))  # a copy on this node when the run's storage is an object store
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(reward_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(reward_dir, num_labels=1).eval()
        scorer = AutoModelForSequenceClassification.from_pretrained(reward_dir)
        with torch.no_grad():  # start from the reward head, so V is on the reward's scale from the first step
            head = label_head(self.model)
            head.weight.copy_(label_head(scorer).weight)
            if head.bias is not None:
                head.bias.zero_()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95))
        self.grad_clip = grad_clip

    def _values(self, prompts, responses) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pack(prompts, responses, self.tokenizer.pad_token_id)
        per_token = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        return at_response(per_token, batch["index"]), batch["mask"]

    @torch.no_grad()
    def values(self, prompts, responses) -> torch.Tensor:
        """[B, R] value of the state before each response token."""
        return self._values(prompts, responses)[0]

    def train(self, prompts, responses, old_values: torch.Tensor, returns: torch.Tensor, epochs: int, minibatch: int,
              clip: float, seed: int) -> dict[str, float]:
        total, steps = 0.0, 0
        for rows in _minibatches(len(prompts), minibatch, epochs, seed):
            values, mask = self._values([prompts[i] for i in rows], [responses[i] for i in rows])
            reach = mask.shape[1]
            loss = value_loss(values, old_values[rows, :reach], returns[rows, :reach], mask, clip)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            steps += 1
        return {"value_loss": total / steps}

    def save(self, uri: str) -> None:
        with storage.writing(uri) as directory:  # on this actor's node; uploaded when storage is an object store
            _save_trainable(self.model, self.optimizer, directory)

    def load(self, uri: str) -> None:
        _load_trainable(self.model, self.optimizer, storage.localize(uri))
