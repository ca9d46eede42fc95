"""Post-training quantization of a causal LM, and its safetensors round trip.

Methods (`METHODS`):
- fp16 / bf16: every weight cast; a plain Hugging Face checkpoint.
- int8_dynamic: linear weights int8 per output channel, activations quantized per batch at run
  time (PyTorch's fbgemm kernels: on CPU the fastest int8 path measured here; torchao's
  Int8DynamicActivationInt8Weight ran 3-6x slower than float on CPU).
- int8_weight_only: linear weights int8 per channel, computed in float (torchao).
- int4_weight_only: 4-bit groups (torchao); its kernels need a CUDA GPU.

GPT-2 keeps its projections in transformers' `Conv1D` (weight [in, out]); quantizers act on
`nn.Linear`, so those are first turned into the equivalent Linear (weight transposed).

Quantized checkpoints hold plain tensors (int8 data and float scales) in safetensors next to a
`compression.json` that names the method; `load_quantized` rebuilds the model from its config
and never unpickles anything. Adapters must be merged into the weights before quantizing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from transformers import AutoConfig
from transformers.pytorch_utils import Conv1D

from components.core.quantize_methods import INTEGER, METHODS, RECIPE  # noqa: F401  (where the quantizers read them)


def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every transformers `Conv1D` ([in, out] weight) by the same map as an `nn.Linear`, in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, dtype=child.weight.dtype)
                linear.weight.data.copy_(child.weight.data.t())
                linear.bias.data.copy_(child.bias.data)
                setattr(parent, name, linear)
    return model


def quantizable(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers a method quantizes: every Linear but the output head (tied to the embedding)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def quantize(model: torch.nn.Module, method: str, group_size: int = 32) -> torch.nn.Module:
    """The model quantized by `method` (see METHODS), in eval mode; float models are cast in place."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r} (known: {', '.join(METHODS)})")
    model.eval()
    if method in ("fp16", "bf16"):
        return model.to(torch.float16 if method == "fp16" else torch.bfloat16)
    conv1d_to_linear(model)
    names = set(quantizable(model))
    if method == "int8_dynamic":
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)
    if method == "int4_weight_only" and not torch.cuda.is_available():
        raise ValueError("int4_weight_only needs a CUDA GPU (torchao's int4 kernels); on CPU use int8_weight_only or int8_dynamic")
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_  # deferred: torchao is heavy

    config = Int8WeightOnlyConfig() if method == "int8_weight_only" else Int4WeightOnlyConfig(group_size=group_size)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in names)
    return model


def save_quantized(model: torch.nn.Module, directory: Path, method: str) -> None:
    """Write config.json, model.safetensors (plain tensors) and compression.json for a model from `quantize`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if method in ("fp16", "bf16"):
        model.save_pretrained(directory)
        (directory / RECIPE).write_text(json.dumps({"method": method}))
        return
    model.config.save_pretrained(directory)
    tensors, metadata, modules = {}, {}, []
    if method == "int8_dynamic":
        for name, module in model.named_modules():
            if isinstance(module, DynamicLinear):
                weight, bias = module._weight_bias()
                tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
                tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales().float().contiguous()
                tensors[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().to(torch.int32).contiguous()
                if bias is not None:  # T5's projections have none
                    tensors[f"{name}.bias"] = bias.detach().contiguous()
                modules.append(name)
        # Everything else is float; a dynamic Linear's own state (packed params, unused scalars) is replaced by the above.
        tensors.update({k: v.contiguous() for k, v in model.state_dict().items()
                        if isinstance(v, torch.Tensor) and k.rpartition(".")[0] not in modules})
    else:
        from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict  # deferred: torchao is heavy

        tensors, metadata = flatten_tensor_state_dict(model.state_dict())
        modules = quantizable(model)
    tensors = _drop_tied(model, tensors)
    save_file(tensors, directory / "model.safetensors", metadata=metadata or None)
    (directory / RECIPE).write_text(json.dumps({"method": method, "modules": modules}))


def load_quantized(directory: Path, model_class) -> torch.nn.Module:
    """The quantized model `save_quantized` wrote, rebuilt from its config, in eval mode.

    model_class: the transformers Auto class of its head (components.core.models.auto_class: causal LM,
    encoder-decoder or encoder classifier); `load_trained` picks it and calls this.
    """
    directory = Path(directory)
    recipe = json.loads((directory / RECIPE).read_text())
    method = recipe["method"]
    if method in ("fp16", "bf16"):
        return model_class.from_pretrained(directory).eval()
    model = quantize(model_class.from_config(AutoConfig.from_pretrained(directory)), method)
    tensors = load_file(directory / "model.safetensors")
    tied = _tied_keys(model)  # before loading replaces the shared tensor
    if method == "int8_dynamic":
        for name in recipe["modules"]:
            weight = torch._make_per_channel_quantized_tensor(
                tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale").double(),
                tensors.pop(f"{name}.weight_zero_point").long(), 0)
            model.get_submodule(name).set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
        expected = {k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and k.rpartition(".")[0] not in recipe["modules"]}
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        with torch.no_grad():
            for key in expected & set(tensors):
                owner, _, attr = key.rpartition(".")
                getattr(model.get_submodule(owner), attr).copy_(tensors[key])
    else:
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict  # deferred: torchao is heavy

        with safe_open(directory / "model.safetensors", "pt") as f:
            metadata = f.metadata()
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
        if leftover:
            raise ValueError(f"{directory / 'model.safetensors'}: tensors not understood: {sorted(leftover)[:5]}")
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{directory / 'model.safetensors'}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the weights (and scales) of the layers `quantize` acts on, whatever their format."""
    total = 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in model.modules():
        if module is head:
            continue
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            total += _tensor_bytes(module.weight)
        elif isinstance(module, DynamicLinear):  # int8 data plus per-channel scale and zero point
            weight, _ = module._weight_bias()
            total += weight.numel() + weight.shape[0] * (8 + 8)
    return total


def weight_count(model: torch.nn.Module) -> int:
    """Parameters of the model counted as weights, whatever their format (a dynamically quantized
    Linear keeps its int8 weight outside `parameters()`); tied weights once."""
    seen = {id(p): p.numel() for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            seen[id(module)] = weight.numel() + (bias.numel() if bias is not None else 0)
    return sum(seen.values())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    if hasattr(tensor, "__tensor_flatten__"):  # a torchao tensor subclass: sum its plain parts
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def _drop_tied(model, tensors: dict) -> dict:
    tied = _tied_keys(model)
    return {k: v for k, v in tensors.items() if k not in tied}


def _tied_keys(model) -> set[str]:
    """State-dict keys whose tensor is an earlier key's: the output head tied to the input embedding, and
    T5's encoder and decoder embeddings (its shared one). Saved once, under the first key."""
    seen, tied = set(), set()
    for key, value in model.state_dict(keep_vars=True).items():
        if not isinstance(value, torch.Tensor):
            continue
        if id(value) in seen:
            tied.add(key)
        seen.add(id(value))
    return tied
