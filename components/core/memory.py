"""Training-memory planner: how many bytes a model needs to store and to train, per device.

Pure Python/torch arithmetic (``transformers`` only inside ``count_params_from_config``);
nothing here imports Ray or MLflow, so the CLI can plan before any cluster exists.

Units: every ``*_bytes`` value is a count of bytes; "GB" means 10**9 bytes (decimal), as the
source document does (1B fp32 parameters -> 4*10**9 bytes = 4 GB). DeepSpeed prints GiB
(2**30); its raw byte counts are what we compare with.

Three accountings live here, and each figure says which it uses:

* the source document's fp32 rule of thumb (4 + 4 + 8 + 8 = 24 bytes/param, "~20x", 80 GB),
  see ``rule_of_thumb_explanation``;
* per-precision model states for DDP/FSDP and fp32 DeepSpeed: fp32 = 4 weights + 4 gradients
  + 8 Adam; bf16/fp16 = the ZeRO paper's mixed-precision Adam, 2 + 2 + 12 = 16 bytes/param;
* DeepSpeed's own estimator for 16-bit DeepSpeed (``zero_model_states_bytes``), which counts
  2 + 18 bytes/param (it adds a 4-byte fp32 gradient copy) and, in stage 3, a gathered
  largest layer instead of the sharded 16-bit weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

GB = 10**9  # decimal, as the source document uses

BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
_ALIASES = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "8": "int8"}

# The source document's per-parameter training breakdown at fp32, in bytes per parameter.
DOC_TRAINING_BREAKDOWN_FP32 = {
    "weights": 4,
    "gradients": 4,
    "adam_states": 8,  # momentum + variance, 4 bytes each
    "activations_and_temp": 8,  # the document's "high-end estimate"
}
DOC_MULTIPLIER = 20  # the document's "~20X memory needed to store the model"

# Model states per parameter in bytes: (weights, gradients, optimizer states).
_MODEL_STATES = {
    "fp32": (4, 4, 8),  # plain fp32 Adam, as in the document
    "bf16": (2, 2, 12),  # ZeRO paper mixed precision: 16-bit weights/grads, fp32 master + m + v
    "fp16": (2, 2, 12),
}

# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models":
# one transformer layer stores 34*s*b*h bytes of activations at 16-bit (no recomputation, no
# tensor/sequence parallelism), plus 5*a*s^2*b bytes for attention scores when they are
# materialised (eager attention). SDPA/flash attention does not keep them, so that term is
# only added when n_heads is given.
KORTHIKANTI_BYTES_PER_SBH = 34
KORTHIKANTI_SCORE_BYTES = 5

DEFAULT_DEVICE_MEMORY_BYTES = 80 * GB
STRATEGIES = ("ddp", "fsdp", "deepspeed")


# --- storage and the document's figures ------------------------------------------------


def normalize_precision(precision: str) -> str:
    """'fp32' | 'bf16' | 'fp16' | 'int8' (aliases like 'float32' accepted); ValueError otherwise."""
    key = str(precision).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BYTES_PER_PARAM:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(BYTES_PER_PARAM)}")
    return key


def bytes_per_param(precision: str) -> int:
    """Bytes to store one parameter: fp32 = 4, bf16/fp16 = 2, int8 = 1."""
    return BYTES_PER_PARAM[normalize_precision(precision)]


def storage_bytes(n_params: float, precision: str = "fp32") -> int:
    """Bytes to hold the weights alone: n_params * bytes_per_param. 1e9 params -> 4e9 / 2e9 / 1e9."""
    return _count(n_params) * bytes_per_param(precision)


def storage_table(n_params: float) -> dict[str, int]:
    """The document's storage list in bytes: {'fp32': 4 B/param, '16-bit': 2, '8-bit': 1} * n_params."""
    return {
        "fp32": storage_bytes(n_params, "fp32"),
        "16-bit": storage_bytes(n_params, "bf16"),
        "8-bit": storage_bytes(n_params, "int8"),
    }


def doc_training_bytes_per_param() -> int:
    """The document's breakdown summed: 4 + 4 + 8 + 8 = 24 bytes/param at fp32 (4 to store + 20 extra)."""
    return sum(DOC_TRAINING_BREAKDOWN_FP32.values())


def doc_training_bytes_by_breakdown(n_params: float) -> int:
    """Training bytes by the document's own per-parameter breakdown: 24 * n_params (1e9 -> 24 GB)."""
    return _count(n_params) * doc_training_bytes_per_param()


def doc_training_bytes_headline(n_params: float) -> int:
    """The document's headline: 20 x the fp32 storage = 80 bytes/param (1e9 -> 80 GB)."""
    return DOC_MULTIPLIER * storage_bytes(n_params, "fp32")


def rule_of_thumb_explanation(n_params: float = 1e9) -> str:
    """Where the document's "~20x" and "80 GB" come from, and what its breakdown really sums to.

    Returns plain text (several lines) that the CLI prints; the numbers are for ``n_params``.
    """
    p = _count(n_params)
    store = storage_bytes(p, "fp32")
    per_param = doc_training_bytes_per_param()
    extra = per_param - BYTES_PER_PARAM["fp32"]
    breakdown = doc_training_bytes_by_breakdown(p)
    headline = doc_training_bytes_headline(p)
    mixed = p * sum(_MODEL_STATES["bf16"])
    return "\n".join([
        f"Storing {_human(p)} params at fp32: 4 bytes/param -> {_gb(store)} GB.",
        "The document's training breakdown per parameter at fp32: weights 4 + gradients 4 + "
        f"Adam states 8 + activations/temp 8 (its high-end estimate) = {per_param} bytes "
        f"= 4 to store + {extra} extra.",
        f"By that breakdown training needs {per_param} bytes/param = {per_param // 4}x the fp32 weights "
        f"-> {_gb(breakdown)} GB.",
        f"The document's \"~20x\" takes the {extra} *extra bytes per parameter* as a multiplier of the "
        f"{_gb(store)} GB of weights: {_gb(store)} GB x {DOC_MULTIPLIER} = {_gb(headline)} GB, which is "
        f"{headline // p} bytes/param, not the {per_param} its breakdown sums to. "
        f"Treat {_gb(headline)} GB as a loose ceiling and {_gb(breakdown)} GB as what the listed items add up to.",
        f"Mixed-precision Adam (ZeRO paper): 2 fp16 weights + 2 fp16 grads + 12 fp32 optimizer "
        f"(master weights, momentum, variance) = 16 bytes/param -> {_gb(mixed)} GB of model states "
        "before activations; DeepSpeed's estimator counts 2 + 18 = 20 bytes/param on one GPU "
        "(it adds a 4-byte fp32 gradient copy).",
    ])


# --- DeepSpeed's ZeRO accounting --------------------------------------------------------


@dataclass
class ZeroStates:
    """Model-state memory under DeepSpeed ZeRO with 16-bit mixed precision and Adam.

    ``gpu_bytes`` is per GPU and equals DeepSpeed's estimator for stages 2 and 3;
    ``cpu_bytes`` is per node, also DeepSpeed's (host RAM: offloaded states, or the buffer
    for loading the model when nothing is offloaded). ``weights + gradients + optimizer_states``
    split ``gpu_bytes`` (our split; DeepSpeed reports only the sum).
    """

    stage: int
    devices: int
    cpu_offload: bool
    offload_params: bool
    gpu_bytes: int
    cpu_bytes: int
    weights: int
    gradients: int
    optimizer_states: int


def zero_model_states_bytes(
    n_params: float,
    stage: int,
    devices: int = 1,
    cpu_offload: bool = False,
    largest_layer_params: int | None = None,
    *,
    nodes: int = 1,
    offload_params: bool | None = None,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> ZeroStates:
    """Per-GPU and per-node bytes of weights, gradients and Adam states under ZeRO ``stage``.

    Mirrors ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
    ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` (deepspeed 0.19),
    which the ``*_all_cold`` printers call. With P params, N = ``devices`` GPUs in total,
    G = N / ``nodes`` GPUs per node, L = ``largest_layer_params``, f = ``additional_buffer_factor``:

    * stage 2: GPU = 2P + 18P/N (16-bit weights replicated; 2 16-bit grads + 4 fp32 grads +
      4 fp32 master weights + 8 Adam m/v sharded), CPU = 4PGf. With ``cpu_offload``
      (offload_optimizer): GPU = 2P, CPU = P * max(4N, 16) * f.
    * stage 3: GPU = 4L + 18P/N (the gathered largest layer's 16-bit weights and grads plus
      the shards; DeepSpeed does not add the 2P/N of sharded 16-bit weights), CPU = 4LGf with
      ``zero_init`` (4PGf without). With ``cpu_offload`` (params and optimizer): GPU = 4L,
      CPU = 18P/nodes * f; optimizer only (``offload_params=False``): GPU = 4L + 2P/N,
      CPU = 16P/nodes * f. Without ``zero_init`` the offload CPU figures become
      P * max(4G, 18 or 16 / nodes) * f.
    * stage 1 (DeepSpeed ships no estimator; same code path as stage 2 but the 16-bit
      gradients stay whole on every rank): GPU = 2P + 2P + 16P/N, offload GPU = 4P; CPU as
      stage 2. The ZeRO paper's stage 1 is 4P + 12P/N (it omits the fp32 gradient copy).
    * stage 0 (nothing sharded, same accounting): GPU = 20P; no offload.

    Raises ValueError for an unknown stage, offload at stage 0, or stage 3 without
    ``largest_layer_params``.
    """
    p = _count(n_params)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    if devices < 1 or nodes < 1 or devices % nodes:
        raise ValueError(f"devices ({devices}) must be a positive multiple of nodes ({nodes})")
    if cpu_offload and stage == 0:
        raise ValueError("CPU offload needs ZeRO stage 1, 2 or 3")
    if stage == 3 and largest_layer_params is None:
        raise ValueError("stage 3 needs largest_layer_params (the biggest single module's parameter count)")
    offload_params = (cpu_offload and stage == 3) if offload_params is None else offload_params
    if offload_params and not (cpu_offload and stage == 3):
        raise ValueError("offload_params needs stage 3 with cpu_offload")
    per_node = devices // nodes
    gpus_factor = 1 / nodes
    f = additional_buffer_factor

    # Same float expressions, in the same order, as DeepSpeed so int() rounds identically.
    sharded = int(18 * p / devices)  # 2 grads16 + 4 grads32 + 4 params32 + 8 Adam m/v
    optim = int(12 * p / devices)  # fp32 master weights + m + v; the rest of `sharded` is gradients
    if stage == 3:
        layer = 4 * int(largest_layer_params)
        half = layer // 2  # gathered 16-bit weights; the other half its 16-bit grads
        if cpu_offload and offload_params:
            weights, grads, opt = half, layer - half, 0
            cpu = p * 18 * gpus_factor * f if zero_init else p * max(4 * per_node, 18 * gpus_factor) * f
        elif cpu_offload:
            weights, grads, opt = half + int(2 * p / devices), layer - half, 0
            cpu = p * 16 * gpus_factor * f if zero_init else p * max(4 * per_node, 16 * gpus_factor) * f
        else:
            weights, grads, opt = half, layer - half + sharded - optim, optim
            cpu = (largest_layer_params if zero_init else p) * 4 * per_node * f
    else:
        full_grads = 2 * p if stage <= 1 else 0  # stages 0/1 keep whole 16-bit grads
        if cpu_offload:
            weights, grads, opt = 2 * p, full_grads, 0
            cpu = p * max(4 * devices, 16) * f
        else:
            if stage == 0:
                sharded, optim = 16 * p, 12 * p  # nothing divided; grads16 are in full_grads
            elif stage == 1:
                sharded = int(16 * p / devices)  # fp32 grads + master + m + v
            weights, grads, opt = 2 * p, full_grads + sharded - optim, optim
            cpu = p * 4 * per_node * f
    return ZeroStates(
        stage=stage,
        devices=devices,
        cpu_offload=cpu_offload,
        offload_params=bool(offload_params),
        gpu_bytes=weights + grads + opt,
        cpu_bytes=int(cpu),
        weights=weights,
        gradients=grads,
        optimizer_states=opt,
    )


# --- activations and model shape ----------------------------------------------------------


def activation_bytes(
    batch: int, seq: int, n_layers: int, hidden: int, precision: str = "bf16", n_heads: int | None = None
) -> int:
    """Activation bytes one device keeps for the backward pass of one micro-batch.

    Korthikanti et al. 2022: per layer 34*s*b*h bytes at 16-bit (+ 5*a*s^2*b when attention
    scores are materialised: pass ``n_heads`` for eager attention; SDPA/flash keeps none).
    fp32 activations double it. Assumes no activation checkpointing and no tensor/sequence
    parallelism; leaves out the embedding output and the logits (s*b*vocab), which matter
    for small models with big vocabularies. ``batch`` is the per-device micro-batch.
    """
    precision = normalize_precision(precision)
    if precision == "int8":
        raise ValueError(_INT8_TRAINING)
    if min(batch, seq, n_layers, hidden) < 1:
        raise ValueError("batch, seq, n_layers and hidden must all be >= 1")
    per_layer = KORTHIKANTI_BYTES_PER_SBH * seq * batch * hidden
    if n_heads:
        per_layer += KORTHIKANTI_SCORE_BYTES * n_heads * seq * seq * batch
    return n_layers * per_layer * BYTES_PER_PARAM[precision] // 2


def guess_shape(n_params: float) -> tuple[int, int]:
    """A GPT-like (n_layers, hidden) for a bare parameter count, when no config is given.

    Uses P ~ 12 * L * h^2 (attention 4h^2 + MLP 8h^2 per layer, embeddings ignored) and
    GPT-2's aspect ratio h = 64 * L (124M -> 12 layers x 768); hidden rounds to a multiple of 64.
    """
    p = _count(n_params)
    layers = max(1, round((p / (12 * 64**2)) ** (1 / 3)))
    hidden = max(64, 64 * round(math.sqrt(p / (12 * layers)) / 64))
    return layers, hidden


def default_largest_layer(hidden: int) -> int:
    """Parameters of the biggest single module when only the width is known: the MLP
    up-projection, 4*h^2 (GPT-2's c_fc). Embeddings (vocab*h) are often larger; pass the
    real figure (``count_params_from_config``) when you have a config."""
    return 4 * hidden * hidden


@dataclass
class ModelSize:
    """Counts read off a Hugging Face config by building the model on the meta device."""

    n_params: int  # unique parameters (tied embeddings once), as model.num_parameters()
    n_layers: int
    hidden: int
    n_heads: int | None
    largest_layer_params: int  # biggest single module's own parameters, as DeepSpeed counts
    max_positions: int | None
    model_type: str


def count_params_from_config(config_dict: dict) -> ModelSize:
    """Parameter count and shape of a causal LM from its HF config dict (GPT-2, Llama, ...).

    Builds the model under ``torch.device("meta")`` so no memory is allocated and no weights
    are downloaded; ``config_dict`` needs ``model_type`` (as in a ``config.json``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(config_dict)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ValueError("the model config has no 'model_type' (e.g. 'gpt2' or 'llama')")
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError) as e:
        raise ValueError(f"cannot build a {model_type!r} config: {e}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model_size(model, model_type)


def model_size(model, model_type: str | None = None) -> ModelSize:
    """``ModelSize`` of a built HF causal LM (any device, ``meta`` included: only shapes are read).

    The largest layer is the biggest module's own (non-recursive) parameter count, as
    DeepSpeed's ``model_to_params`` measures it for its stage-3 estimate.
    """
    config = model.config
    # parameters() yields each tensor once, so tied input/output embeddings count once.
    n_params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ModelSize(
        n_params=int(n_params),
        n_layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        n_heads=getattr(config, "num_attention_heads", None),
        largest_layer_params=int(largest),
        max_positions=getattr(config, "max_position_embeddings", None),
        model_type=model_type or config.model_type,
    )


# --- the estimate -------------------------------------------------------------------------


@dataclass
class Recommendation:
    """Which strategy to train with, and why (``reason`` is one sentence for humans)."""

    strategy: str  # "ddp" | "fsdp" | "deepspeed"
    stage: int | None  # ZeRO stage for deepspeed, 3 for fsdp (full shard), None for ddp
    cpu_offload: bool
    reason: str
    per_device_bytes: int  # the recommended setup's estimated per-device total


@dataclass
class MemoryEstimate:
    """Per-device memory of one training setup, in bytes, plus the recommended strategy.

    ``weights + gradients + optimizer_states + activations == total`` (device memory);
    ``cpu_bytes`` is host RAM for the node (offloaded states; DeepSpeed's figure when its
    accounting is used). ``accounting`` names the per-parameter table used for model states.
    """

    n_params: int
    precision: str
    strategy: str
    stage: int | None
    devices: int
    cpu_offload: bool
    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    total: int
    cpu_bytes: int
    accounting: str
    activations_method: str
    device_memory_bytes: int
    fits: bool
    recommendation: Recommendation | None = None
    shape: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(
    n_params: float,
    precision: str = "fp32",
    strategy: str = "ddp",
    stage: int | None = None,
    devices: int = 1,
    batch: int | None = None,
    seq: int | None = None,
    n_layers: int | None = None,
    hidden: int | None = None,
    cpu_offload: bool = False,
    *,
    n_heads: int | None = None,
    largest_layer_params: int | None = None,
    device_memory_bytes: int = DEFAULT_DEVICE_MEMORY_BYTES,
    recommend: bool = True,
) -> MemoryEstimate:
    """Per-device training memory for ``n_params`` with Adam, and the recommended strategy.

    ``strategy``: "ddp" (everything replicated), "fsdp" (full shard: weights, gradients and
    optimizer states / devices, like ZeRO-3) or "deepspeed" with ``stage`` 0-3 (default 2;
    stage 1 shards optimizer states, 2 also gradients, 3 also weights). 16-bit DeepSpeed uses
    DeepSpeed's estimator (``zero_model_states_bytes``); everything else the per-precision
    table (fp32 4+4+8, bf16/fp16 2+2+12 bytes/param) sharded by the same ZeRO rules, with the
    gathered largest layer's weights+grads added when weights are sharded.

    Activations: ``activation_bytes`` for the per-device micro-batch (``batch`` defaults to 1,
    ``seq`` to 1024); without ``n_layers``/``hidden`` the shape comes from ``guess_shape``.
    (The document's flat 8 bytes/param is kept for its own figures only: it grows with the
    model instead of with batch x sequence and makes large models look untrainable.)
    ``largest_layer_params`` defaults to ``default_largest_layer(hidden)``.
    ``devices`` are assumed to sit on one node; host RAM (``cpu_bytes``) is not checked.
    """
    precision = normalize_precision(precision)
    if precision == "int8":
        raise ValueError(_INT8_TRAINING)
    p = _count(n_params)
    strategy, stage = _check_strategy(strategy, stage, cpu_offload)
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    if device_memory_bytes <= 0:
        raise ValueError("device memory must be positive")
    if (n_layers is None) != (hidden is None):
        raise ValueError("give both n_layers and hidden, or neither")
    for name, value in (("batch", batch), ("seq", seq), ("n_layers", n_layers), ("hidden", hidden)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")

    guessed = n_layers is None
    if guessed:
        n_layers, hidden = guess_shape(p)
    b, s = batch or 1, seq or 1024
    acts = activation_bytes(b, s, n_layers, hidden, precision, n_heads)
    attn = " + 5*a*s^2*b (eager attention)" if n_heads else " (SDPA/flash attention: no score term)"
    method = f"Korthikanti et al. 2022: {n_layers} layers x 34*s*b*h{attn}, b={b}, s={s}, h={hidden}"
    if precision == "fp32":
        method += ", x2 for fp32"
    if guessed:
        method += " (shape guessed from the parameter count)"
    if largest_layer_params is None:
        largest_layer_params = default_largest_layer(hidden)

    if strategy == "deepspeed" and precision in ("bf16", "fp16"):
        z = zero_model_states_bytes(p, stage, devices, cpu_offload, largest_layer_params)
        w, g, o, cpu = z.weights, z.gradients, z.optimizer_states, z.cpu_bytes
        accounting = "DeepSpeed estimator (16-bit weights/grads, fp32 grads, master weights, Adam m/v)"
    else:
        level = {"ddp": 0, "fsdp": 3}.get(strategy, stage)
        w, g, o, cpu = _sharded_states(p, precision, level, devices, cpu_offload, largest_layer_params)
        accounting = (
            "document fp32 Adam: 4 weights + 4 gradients + 8 optimizer bytes/param"
            if precision == "fp32"
            else "ZeRO paper mixed-precision Adam: 2 weights + 2 gradients + 12 optimizer bytes/param"
        )
    total = w + g + o + acts
    result = MemoryEstimate(
        n_params=p,
        precision=precision,
        strategy=strategy,
        stage=stage,
        devices=devices,
        cpu_offload=cpu_offload,
        weights=w,
        gradients=g,
        optimizer_states=o,
        activations=acts,
        total=total,
        cpu_bytes=cpu,
        accounting=accounting,
        activations_method=method,
        device_memory_bytes=int(device_memory_bytes),
        fits=total <= device_memory_bytes,
        shape={"n_layers": n_layers, "hidden": hidden, "guessed": guessed, "batch": b, "seq": s,
               "largest_layer_params": largest_layer_params},
    )
    if recommend:
        result.recommendation = recommend_strategy(
            p, precision, devices, device_memory_bytes, batch, seq, n_layers, hidden,
            n_heads=n_heads, largest_layer_params=largest_layer_params,
        )
    return result


def recommend_strategy(
    n_params: float,
    precision: str = "fp32",
    devices: int = 1,
    device_memory_bytes: int = DEFAULT_DEVICE_MEMORY_BYTES,
    batch: int | None = None,
    seq: int | None = None,
    n_layers: int | None = None,
    hidden: int | None = None,
    *,
    n_heads: int | None = None,
    largest_layer_params: int | None = None,
) -> Recommendation:
    """DDP if a full replica (weights, grads, optimizer, activations) fits one device; else
    FSDP full shard over ``devices`` if that fits; else DeepSpeed stage 3 with CPU offload.

    DDP comes first because it needs no gathers or reduce-scatters: sharding only pays when
    memory forces it. If nothing fits, the reason says how many devices FSDP would need.
    """

    def total(strategy, stage=None, offload=False, n=devices):
        return estimate(
            n_params, precision, strategy, stage, n, batch, seq, n_layers, hidden, offload,
            n_heads=n_heads, largest_layer_params=largest_layer_params,
            device_memory_bytes=device_memory_bytes, recommend=False,
        )

    mem = _gb(device_memory_bytes)
    ddp = total("ddp")
    if ddp.fits:
        return Recommendation(
            "ddp", None, False,
            f"DDP: a full replica needs {_gb(ddp.total)} GB per device (weights {_gb(ddp.weights)} + "
            f"gradients {_gb(ddp.gradients)} + optimizer {_gb(ddp.optimizer_states)} + activations "
            f"{_gb(ddp.activations)}), which fits in {mem} GB; no sharding needed.",
            ddp.total,
        )
    fsdp = total("fsdp")
    if devices > 1 and fsdp.fits:
        return Recommendation(
            "fsdp", 3, False,
            f"FSDP: a full replica needs {_gb(ddp.total)} GB > {mem} GB per device; sharding weights, "
            f"gradients and optimizer states over {devices} devices brings it to {_gb(fsdp.total)} GB.",
            fsdp.total,
        )
    offload = total("deepspeed", 3, True)
    why_not_fsdp = (
        "FSDP needs more than one device to shard" if devices == 1
        else f"FSDP over {devices} devices still needs {_gb(fsdp.total)} GB"
    )
    if offload.fits:
        return Recommendation(
            "deepspeed", 3, True,
            f"DeepSpeed stage 3 + CPU offload: a full replica needs {_gb(ddp.total)} GB > {mem} GB per "
            f"device and {why_not_fsdp}; offloading weights and optimizer states to CPU "
            f"({_gb(offload.cpu_bytes)} GB host RAM) leaves {_gb(offload.total)} GB per device.",
            offload.total,
        )
    need = _devices_needed(lambda n: total("fsdp", n=n).fits)
    more = (
        f"FSDP would fit on {need} devices, or cut batch/seq or checkpoint activations"
        if need else "the activations alone do not fit: cut batch/seq or checkpoint activations"
    )
    return Recommendation(
        "deepspeed", 3, True,
        f"Does not fit: even DeepSpeed stage 3 + CPU offload needs {_gb(offload.total)} GB > {mem} GB per "
        f"device (activations {_gb(offload.activations)} GB); {more}.",
        offload.total,
    )


# --- helpers -------------------------------------------------------------------------------

_INT8_TRAINING = (
    "int8 is a storage (quantised inference) precision, not a training one: "
    "plan training in fp32, bf16 or fp16 (the 8-bit storage figure is on the storage line)"
)


def _sharded_states(p, precision, level, devices, cpu_offload, largest_layer):
    """(weights, gradients, optimizer, cpu) bytes per device under ZeRO sharding ``level``.

    level 1 divides optimizer states by devices, 2 also gradients, 3 also weights, and then
    adds the gathered largest layer's weights and grads (the unit being computed is whole).
    Offload moves what is sharded to host RAM: level 1 the optimizer, 2 also gradients,
    3 everything but the gathered layer; cpu is the node's total of the offloaded states.
    """
    wb, gb, ob = _MODEL_STATES[precision]
    w = wb * p if level < 3 else math.ceil(wb * p / devices)
    g = gb * p if level < 2 else math.ceil(gb * p / devices)
    o = ob * p if level < 1 else math.ceil(ob * p / devices)
    gathered = (wb + gb) * largest_layer if level >= 3 else 0
    cpu = 0
    if cpu_offload:
        cpu = ob * p + (gb * p if level >= 2 else 0) + (wb * p if level >= 3 else 0)
        o = 0
        g = 0 if level >= 2 else g
        w = 0 if level >= 3 else w
    return w + gathered // 2, g + gathered - gathered // 2, o, cpu


def _check_strategy(strategy: str, stage: int | None, cpu_offload: bool) -> tuple[str, int | None]:
    strategy = str(strategy).strip().lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "ddp":
        if stage not in (None, 0):
            raise ValueError("--stage applies to deepspeed (0-3); DDP shards nothing")
        if cpu_offload:
            raise ValueError("DDP has no CPU offload: use fsdp or deepspeed")
        return strategy, None
    if strategy == "fsdp":
        if stage not in (None, 3):
            raise ValueError("FSDP here means full shard (stage-3-like); use deepspeed for stages 1-2")
        return strategy, 3
    stage = 2 if stage is None else stage
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    if cpu_offload and stage == 0:
        raise ValueError("CPU offload needs ZeRO stage 1, 2 or 3")
    return strategy, stage


def _devices_needed(fits, limit: int = 1 << 16) -> int | None:
    """Smallest power-of-two device count for which ``fits(n)`` holds, or None up to ``limit``."""
    n = 1
    while n <= limit:
        if fits(n):
            return n
        n *= 2
    return None


def _count(n_params: float) -> int:
    """A positive whole parameter count from an int or an integral float like 1.24e8."""
    if isinstance(n_params, bool) or not isinstance(n_params, (int, float)):
        raise ValueError(f"parameter count must be a number, got {n_params!r}")
    if not math.isfinite(n_params) or n_params <= 0:
        raise ValueError(f"parameter count must be positive, got {n_params!r}")
    return int(round(n_params))


def format_gb(n_bytes: float) -> str:
    """Decimal GB for people: two decimals with trailing zeros trimmed ('4', '2.5', '19.25'),
    three significant digits below 0.1 GB ('0.0043') so small models do not print as 0."""
    gb = n_bytes / GB
    if gb and abs(gb) < 0.1:
        return f"{gb:.2g}" if abs(gb) >= 0.01 else f"{gb:.3g}"
    return f"{gb:.2f}".rstrip("0").rstrip(".")


_gb = format_gb


def _human(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)
