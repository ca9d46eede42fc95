"""Fine-tuning methods: which weights train. Full, selective, and the PEFT families through `peft`.

- full: every weight trains.
- selective: only parameters whose names match chosen patterns train (blocks, layers, biases).
- lora (reparameterization): W + (alpha / r) * B @ A with A [r, in], B [out, r]; W stays frozen.
  A 512 x 64 weight at r = 8 trains 8 * (512 + 64) = 4,608 parameters instead of 32,768.
- prompt_tuning (additive): trainable soft-prompt embeddings prepended to the input.
- ia3 (additive): learned vectors that rescale keys, values and feed-forward activations.
"""

from __future__ import annotations

import fnmatch

import torch

from components.core.models import family_of
from components.core.peft_settings import LoraSettings, Method, PromptTuningSettings, SelectiveSettings  # noqa: F401

# peft's task type per family, when the caller names none (it picks the PeftModel wrapper and how it generates).
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "masked": None}
ALL_LINEAR = "all-linear"  # peft's keyword: every Linear / Conv1D in the blocks, attention and MLP, not the output head


def lora_defaults() -> dict[str, list[str]]:
    """peft's default LoRA targets per model_type (the attention projections it applies when
    target_modules is None): gpt2 c_attn; llama q_proj, v_proj; t5 q, v; bert query, value; ..."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    return TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING


def ia3_defaults() -> dict[str, tuple[list[str], list[str]]]:
    """peft's IA3 (target modules, feed-forward modules among them) per model_type: gpt2 (c_attn,
    mlp.c_proj; mlp.c_proj); llama (k_proj, v_proj, down_proj; down_proj); t5 (k, v, wo; wo); ..."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    return {arch: (targets, FEEDFORWARD[arch]) for arch, targets in TARGETS.items() if arch in FEEDFORWARD}


def apply_method(model, method: Method, lora: LoraSettings, prompt_tuning: PromptTuningSettings,
                 selective: SelectiveSettings, tokenizer=None, task_type: str | None = None,
                 modules_to_save: list[str] | None = None):
    """Return the model to train with `method`; base weights not trained have requires_grad False.

    For the peft methods the result is a `PeftModel` wrapping `model` (whose weights it shares).
    task_type: peft's task type; None: CAUSAL_LM or SEQ_2_SEQ_LM by the model's family, none for a
    masked LM (a plain PeftModel: peft's causal wrapper would ask it to generate). A task head's type
    (SEQ_CLS, TOKEN_CLS) makes peft train the new classifier too; modules_to_save (lora) adds more
    modules trained whole (e.g. a new pooler).
    Raises ValueError naming the field when a target module or pattern matches nothing.
    """
    import peft

    arch = model.config.model_type
    # peft's task type picks the wrapper (PeftModelForCausalLM / ForSeq2SeqLM / ...) and how it generates.
    task_type = task_type or TASK_TYPES[family_of(model)]
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "selective":
        # The patterns are alternatives (the default names block 3 in GPT-2's and in Llama's layout): one model
        # matches some of them; none at all is a mistake.
        chosen = {n for n, _ in model.named_parameters() if any(fnmatch.fnmatch(n, pat) for pat in selective.trainable)}
        if not chosen:
            names = [n for n, _ in model.named_parameters()]
            raise ValueError(f"selective.trainable: no parameter matches any of {selective.trainable} (e.g. {names[:3]})")
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)
        return model
    if method == "lora":
        targets = lora_targets(model, lora.target_modules)
        config = peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
            fan_in_fan_out=uses_conv1d(model, targets), task_type=task_type, modules_to_save=modules_to_save,
        )
        return peft.get_peft_model(model, config)
    if method == "ia3":
        if arch not in ia3_defaults():
            raise ValueError(f"method: ia3 has no default target modules for a {arch} model (peft knows {sorted(ia3_defaults())}); "
                             f"use lora (lora.target_modules) instead. Linear modules: {linear_module_names(model)}")
        targets, feedforward = ia3_defaults()[arch]
        config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward,
                                fan_in_fan_out=uses_conv1d(model, targets), task_type=task_type)
        return peft.get_peft_model(model, config)
    if method == "prompt_tuning":
        init = dict(prompt_tuning_init="RANDOM")
        if prompt_tuning.init_text:
            if tokenizer is None:
                raise ValueError("prompt_tuning.init_text needs the tokenizer")
            init = dict(prompt_tuning_init="TEXT", prompt_tuning_init_text=prompt_tuning.init_text,
                        tokenizer_name_or_path=tokenizer.name_or_path)
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=prompt_tuning.num_virtual_tokens, **init)
        return peft.get_peft_model(model, config)
    raise ValueError(f"method: unknown {method!r}")


def lora_targets(model: torch.nn.Module, requested: list[str] | None) -> list[str] | str:
    """The target_modules to give peft: the requested names (checked to exist), the string
    'all-linear' (peft's form of it), or peft's default for the model's architecture.
    Raises ValueError naming lora.target_modules when a name matches nothing or there is no default."""
    arch = model.config.model_type
    if requested and ALL_LINEAR in requested:
        if len(requested) > 1:
            raise ValueError(f"lora.target_modules: {ALL_LINEAR!r} already takes every linear layer; give it alone, not with {requested}")
        return ALL_LINEAR
    if requested:
        _check_targets(model, requested, "lora.target_modules")
        return requested
    if arch not in lora_defaults():
        raise ValueError(f"lora.target_modules: peft has no default for a {arch} model; set it to some of its linear modules "
                         f"{linear_module_names(model)} (e.g. the attention projections), or to ['{ALL_LINEAR}']")
    targets = list(lora_defaults()[arch])
    _check_targets(model, targets, "lora.target_modules")
    return targets


def uses_conv1d(model: torch.nn.Module, targets: list[str] | str) -> bool:
    """Whether the target modules are transformers' Conv1D (GPT-2's projections), whose weight is
    stored [in, out] rather than Linear's [out, in]: peft's fan_in_fan_out."""
    from transformers.pytorch_utils import Conv1D

    def targeted(name: str) -> bool:
        return targets == ALL_LINEAR or any(name == t or name.endswith("." + t) for t in targets)

    return any(isinstance(m, Conv1D) and targeted(n) for n, m in model.named_modules())


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's 2-D weight-bearing modules (Linear, Conv1D, embeddings),
    sorted: what lora.target_modules can name."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2})


def _check_targets(model: torch.nn.Module, targets: list[str], field: str) -> None:
    names = [n for n, _ in model.named_modules()]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ValueError(f"{field}: no module named {t!r} in this {model.config.model_type} model "
                             f"(weight-bearing modules: {linear_module_names(model)})")


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    seen = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())
