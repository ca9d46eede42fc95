"""Magnitude pruning of a transformer's blocks (a causal LM, or a BERT classifier's encoder).

- unstructured: the smallest-magnitude weights of all block projections together (one global
  threshold, torch.nn.utils.prune's global L1 criterion) set to zero. The shapes stay; the zeros
  compress on disk and a sparse kernel could skip them.
- channels: per block, the MLP's hidden channels with the smallest weight norms removed, so the
  model really is smaller (a narrower `n_inner` / `intermediate_size`) and loads as a plain
  Hugging Face model.

Embeddings, norms and the output head are never pruned: in a small model they hold most of the
parameters the next token depends on.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.utils.prune as torch_prune

from components.core.models import transformer_blocks


def block_weights(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every projection inside the transformer blocks (Linear or GPT-2's Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    blocks = {id(b) for b in transformer_blocks(model)}
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and any(id(m) in blocks for m in _ancestors(model, name)):
            found.append((name, module))
    return found


def prune_unstructured(model: torch.nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the `sparsity` share of block weights with the smallest |w|, in place; returns the
    keep-masks ({parameter name: bool tensor}) so training can hold the zeros."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    modules = block_weights(model)
    torch_prune.global_unstructured([(m, "weight") for _, m in modules], pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    masks = {}
    for name, module in modules:
        masks[f"{name}.weight"] = module.weight_mask.bool().clone()
        torch_prune.remove(module, "weight")  # fold the mask into the weight: a plain tensor with zeros
    return masks


def sparsity(model: torch.nn.Module) -> float:
    """Share of exactly-zero entries among the block weights."""
    weights = [m.weight for _, m in block_weights(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero the pruned weights (after an optimizer step moved them), in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = name.removeprefix("module.")  # DDP's wrapper
            if key in masks:
                param.mul_(masks[key].to(param.device, param.dtype))


def prune(model: torch.nn.Module, method: str, sparsity: float) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(pruned copy, keep-masks) of `model`. method "unstructured": the `sparsity` share of block
    weights with the smallest |w| zeroed, masks to hold the zeros in training; "channels": that
    share of each MLP's hidden channels removed, no masks (the weights are gone)."""
    if method == "unstructured":
        pruned = copy.deepcopy(model)
        return pruned, prune_unstructured(pruned, sparsity)
    if method == "channels":
        return prune_mlp_channels(model, 1 - sparsity), {}
    raise ValueError(f"method must be 'unstructured' or 'channels', got {method!r}")


def prune_mlp_channels(model: torch.nn.Module, keep: float) -> torch.nn.Module:
    """A copy of the model whose MLPs keep the `keep` share of hidden channels with the largest
    weight norms (same count in every block, so the config stays uniform). GPT-2, Llama or BERT."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    config = copy.deepcopy(model.config)
    gpt2 = hasattr(model, "transformer")
    bert = config.model_type == "bert"  # under any head: its MLP is intermediate.dense then output.dense
    width = (config.n_inner or 4 * config.n_embd) if gpt2 else config.intermediate_size
    kept = max(1, round(keep * width))
    if gpt2:
        config.n_inner = kept
    else:
        config.intermediate_size = kept
    smaller = type(model)(config)
    state = model.state_dict()
    for i, block in enumerate(transformer_blocks(model)):
        if gpt2:  # Conv1D weights are [in, out]: c_fc [d, width], c_proj [width, d]
            fc, proj = block.mlp.c_fc, block.mlp.c_proj
            score = fc.weight.norm(dim=0) * proj.weight.norm(dim=1)
            index = score.topk(kept).indices.sort().values
            prefix = f"transformer.h.{i}.mlp."
            state[prefix + "c_fc.weight"] = fc.weight[:, index]
            state[prefix + "c_fc.bias"] = fc.bias[index]
            state[prefix + "c_proj.weight"] = proj.weight[index, :]
        elif bert:  # Linear weights are [out, in]: intermediate [width, d], output [d, width]
            up, down = block.intermediate.dense, block.output.dense
            score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
            index = score.topk(kept).indices.sort().values
            prefix = f"{model.base_model_prefix}.encoder.layer.{i}."
            state[prefix + "intermediate.dense.weight"] = up.weight[index]
            state[prefix + "intermediate.dense.bias"] = up.bias[index]
            state[prefix + "output.dense.weight"] = down.weight[:, index]
        else:  # Linear weights are [out, in]: gate/up [width, d], down [d, width]
            mlp = block.mlp
            score = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
            index = score.topk(kept).indices.sort().values
            prefix = f"model.layers.{i}.mlp."
            state[prefix + "gate_proj.weight"] = mlp.gate_proj.weight[index]
            state[prefix + "up_proj.weight"] = mlp.up_proj.weight[index]
            state[prefix + "down_proj.weight"] = mlp.down_proj.weight[:, index]
    smaller.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return smaller.eval()


def keep_layers(model: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of the model with only the given transformer blocks (in that order): a student
    initialised from its teacher's layers."""
    if not layers or any(not 0 <= i < len(transformer_blocks(model)) for i in layers):
        raise ValueError(f"layers {layers} must be indices of the model's {len(transformer_blocks(model))} blocks")
    config = copy.deepcopy(model.config)
    gpt2 = hasattr(model, "transformer")
    bert = config.model_type == "bert"  # a BERT under any head: its blocks are bert.encoder.layer
    prefix = "transformer.h." if gpt2 else "bert.encoder.layer." if bert else "model.layers."
    if gpt2:
        config.n_layer = len(layers)
    else:
        config.num_hidden_layers = len(layers)
    smaller = type(model)(config)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, _, rest = key.removeprefix(prefix).partition(".")
            if int(index) in layers:
                state[f"{prefix}{layers.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    smaller.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return smaller.eval()


def _ancestors(model: torch.nn.Module, name: str) -> list[torch.nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]
