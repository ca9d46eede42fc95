"""Magnitude pruning of a transformer's blocks (a causal LM, or a BERT-like classifier's encoder).

- unstructured: the smallest-magnitude weights of all block projections together (one global
  threshold, torch.nn.utils.prune's global L1 criterion) set to zero. The shapes stay; the zeros
  compress on disk and a sparse kernel could skip them.
- channels: per block, the MLP's hidden channels with the smallest weight norms removed, so the
  model really is smaller (a narrower `n_inner` / `intermediate_size`) and loads as a plain
  Hugging Face model. GPT-2, BERT-like encoders (BERT, RoBERTa), Llama-like gated decoders (Llama,
  Qwen2, Mistral, Gemma), GPT-NeoX and Phi.

Embeddings, norms and the output head are never pruned: in a small model they hold most of the
parameters the next token depends on.
"""

from __future__ import annotations

import copy
import math

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


# An MLP's layout inside a block: the projections into the hidden channels (several when gated), the one
# out of them, and the config field holding the channel count. The first layout a block has is used.
MLP_LAYOUTS: list[tuple[tuple[str, ...], str, str]] = [
    (("mlp.c_fc",), "mlp.c_proj", "n_inner"),  # GPT-2 (Conv1D)
    (("intermediate.dense",), "output.dense", "intermediate_size"),  # BERT-like encoders: BERT, RoBERTa, ELECTRA, ...
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size"),  # gated decoders: Llama, Qwen2, Mistral, Gemma
    (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size"),  # GPT-NeoX
    (("mlp.fc1",), "mlp.fc2", "intermediate_size"),  # Phi
]


def prune_mlp_channels(model: torch.nn.Module, keep: float) -> torch.nn.Module:
    """A copy of the model whose MLPs keep the `keep` share of hidden channels with the largest
    weight norms (same count in every block, so the config stays uniform). Channel score: the
    product over the MLP's projections of each channel's weight norm. Layouts: MLP_LAYOUTS (GPT-2,
    BERT-like encoders, Llama-like gated decoders, GPT-NeoX, Phi); raises ValueError for others."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    blocks = transformer_blocks(model)
    ups, down, field = _mlp_layout(model, blocks)
    config = copy.deepcopy(model.config)
    width = _channels(blocks[0].get_submodule(ups[0]), out=True)
    kept = max(1, round(keep * width))
    setattr(config, field, kept)
    smaller = type(model)(config)
    state = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    for block in blocks:
        prefix = names[id(block)] + "."
        projections = [block.get_submodule(u) for u in ups]
        out = block.get_submodule(down)
        score = math.prod([_channel_norms(m, out=True) for m in projections]) * _channel_norms(out, out=False)
        index = score.topk(kept).indices.sort().values
        for name, m in zip(ups, projections):
            state[f"{prefix}{name}.weight"] = m.weight.index_select(_channel_dim(m, out=True), index)
            if m.bias is not None:
                state[f"{prefix}{name}.bias"] = m.bias[index]
        state[f"{prefix}{down}.weight"] = out.weight.index_select(_channel_dim(out, out=False), index)  # its bias is per output: kept
    smaller.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return smaller.eval()


def _mlp_layout(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> tuple[tuple[str, ...], str, str]:
    def has(block: torch.nn.Module, name: str) -> bool:
        try:
            return isinstance(block.get_submodule(name), torch.nn.Module)
        except AttributeError:
            return False

    for ups, down, field in MLP_LAYOUTS:
        if all(has(b, n) for b in blocks for n in (*ups, down)) and hasattr(model.config, field):
            return ups, down, field
    raise ValueError(f"MLP channel pruning does not support the {model.config.model_type} architecture "
                     f"({type(model).__name__}): its blocks have none of the MLP layouts {[(u, d) for u, d, _ in MLP_LAYOUTS]}; "
                     "use method: unstructured")


def _channel_dim(module: torch.nn.Module, out: bool) -> int:
    """The weight dimension indexing the MLP's hidden channels: a projection into them (out=True)
    has them as outputs, the projection out of them as inputs. Linear stores [out, in], GPT-2's Conv1D [in, out]."""
    from transformers.pytorch_utils import Conv1D

    dim = 0 if out else 1
    return 1 - dim if isinstance(module, Conv1D) else dim


def _channel_norms(module: torch.nn.Module, out: bool) -> torch.Tensor:
    """[channels] L2 norm of each hidden channel's weights in one projection."""
    return module.weight.norm(dim=1 - _channel_dim(module, out))


def _channels(module: torch.nn.Module, out: bool) -> int:
    return module.weight.shape[_channel_dim(module, out)]


# Config fields with one entry per layer (Qwen2, Gemma 2/3, Mistral 3: sliding or full attention): a student keeps its layers' entries.
PER_LAYER_FIELDS = ("layer_types",)


def keep_layers(model: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of the model with only the given transformer blocks (in that order): a student
    initialised from its teacher's layers. Any model whose blocks sit in one list (every decoder-only
    or encoder-only one); an encoder-decoder raises ValueError."""
    blocks = transformer_blocks(model)
    if not layers or any(not 0 <= i < len(blocks) for i in layers):
        raise ValueError(f"layers {layers} must be indices of the model's {len(blocks)} blocks")
    names = {id(m): n for n, m in model.named_modules()}
    lists = {names[id(b)].rpartition(".")[0] for b in blocks}
    if len(lists) != 1 or getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"keeping layers needs the blocks in one list; this {model.config.model_type} model has them in {sorted(lists)}")
    prefix = lists.pop() + "."  # transformer.h. (GPT-2), bert.encoder.layer. (BERT), model.layers. (Llama), ...
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)  # GPT-2's n_layer through its attribute map
    for field in PER_LAYER_FIELDS:
        if isinstance(getattr(config, field, None), list):
            setattr(config, field, [getattr(config, field)[i] for i in layers])
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
