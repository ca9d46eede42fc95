"""Transformers built from a config, no hub download ever, in the three families of the source
document: causal decoders (GPT-2, Llama), masked encoders (BERT) and encoder-decoders (T5).

The helpers that read a model (family_of, transformer_blocks, context_length, auto_class) also take
any architecture transformers ships, as a user's pretrained checkpoint brings it: they ask the
model and transformers' own registries, not a list of names."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from components.core.model_config import FAMILY, Family, ModelConfig  # noqa: F401  (where the model code reads them)
from components.core.quantize import INTEGER, RECIPE, load_quantized


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised model of cfg's family, its ids taken from `tokenizer`: a causal LM,
    a masked LM (needs the tokenizer's mask token) or a T5 encoder-decoder (needs sentinel tokens)."""
    if cfg.family == "causal":
        return build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, seed)
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"model.n_embd ({cfg.n_embd}) must be divisible by model.n_head ({cfg.n_head})")
    if cfg.family == "masked":
        if tokenizer.mask_token_id is None:
            raise ValueError("a bert model needs a tokenizer with a mask token (tokenizer step: mask_token: <mask>)")
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
            intermediate_size=4 * cfg.n_embd, max_position_embeddings=cfg.n_positions, type_vocab_size=2,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, pad_token_id=tokenizer.pad_token_id,
        )
        model_cls = BertForMaskedLM
    else:
        if not sentinel_ids(tokenizer):
            raise ValueError("a t5 model needs a tokenizer with sentinel tokens (tokenizer step: sentinel_tokens: 32)")
        config = T5Config(
            vocab_size=len(tokenizer), d_model=cfg.n_embd, d_kv=cfg.n_embd // cfg.n_head, d_ff=4 * cfg.n_embd,
            num_layers=cfg.n_layer, num_decoder_layers=cfg.n_layer, num_heads=cfg.n_head, dropout_rate=cfg.dropout,
            # T5 has relative positions and no length limit; n_positions still bounds what the lifecycle feeds it.
            n_positions=cfg.n_positions, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        )
        model_cls = T5ForConditionalGeneration
    torch.manual_seed(seed)
    return model_cls(config)


SENTINEL = "<extra_id_{}>"


def sentinel_ids(tokenizer) -> list[int]:
    """Ids of the T5 sentinel tokens <extra_id_0>, <extra_id_1>, ... the tokenizer has, in order."""
    vocab = tokenizer.get_vocab()
    ids = []
    while SENTINEL.format(len(ids)) in vocab:
        ids.append(vocab[SENTINEL.format(len(ids))])
    return ids


# Heads that name an encoder's task; a decoder can carry some of them too (GPT2ForSequenceClassification, a
# reward model), so a head alone decides only for a model_type transformers does not know.
ENCODER_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")
DECODER_HEADS = ("ForCausalLM", "LMHeadModel")


def family_of(model_or_config) -> Family:
    """The family of a built or loaded model (or its config), for any architecture transformers ships.

    - seq2seq: an encoder-decoder (`config.is_encoder_decoder`: T5, BART, ...).
    - masked: an encoder-only type, i.e. one with a masked-LM class in transformers
      (MODEL_FOR_MASKED_LM_MAPPING_NAMES: BERT, RoBERTa, DistilBERT, ...) not configured as a decoder,
      under any head (its classifiers too). Decoder-only types (GPT-2, Llama, Qwen2, ...) have no
      masked-LM class, so their classifiers (a reward model) stay causal. BERT and RoBERTa also have a
      causal class (BertLMHeadModel), used only with `is_decoder=True` or a causal head in `architectures`.
    - causal: everything else.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    head = (getattr(config, "architectures", None) or [""])[0]
    if getattr(config, "is_decoder", False) or head.endswith(DECODER_HEADS):
        return "causal"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked"
    # A model_type transformers does not map (remote code): its masked-LM head is the only sure sign of an encoder.
    return "masked" if head.endswith("ForMaskedLM") else "causal"


def build_causal_lm(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM; the same seed gives the same weights."""
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"model.n_embd ({cfg.n_embd}) must be divisible by model.n_head ({cfg.n_head})")
    ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if cfg.architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **ids,
        )
        model_cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.n_positions,
            attention_dropout=cfg.dropout, tie_word_embeddings=True, **ids,
        )
        model_cls = LlamaForCausalLM
    torch.manual_seed(seed)
    return model_cls(config)


def transformer_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated blocks of a model, in module order (the units FSDP shards and checkpoints,
    and the layers a student keeps); an encoder-decoder lists its encoder's blocks, then its decoder's.

    Found from the model itself: the modules whose class is named in its `_no_split_modules` (the
    layer classes transformers keeps whole on one device) and that sit directly in a ModuleList
    (that list holds embeddings or attention sub-modules in a few models; they are not blocks).
    Models without `_no_split_modules` (BERT, RoBERTa) fall back to the known attribute layouts.
    """
    if hasattr(model, "get_base_model"):  # a peft wrapper
        model = model.get_base_model()
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        blocks = [m for m in _list_items(model) if any(c.__name__ in names for c in type(m).__mro__)]  # mro: FSDP renames the class
        if blocks:
            return blocks
    return _blocks_by_attribute(model)


def _list_items(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every direct item of every ModuleList in the model, in module order, not descending into
    an item (a block's own sub-lists are not blocks)."""
    items: list[torch.nn.Module] = []

    def walk(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList):
                items.extend(child)
            else:
                walk(child)

    walk(model)
    return items


def _blocks_by_attribute(model: PreTrainedModel) -> list[torch.nn.Module]:
    """GPT-2's h, BERT's encoder.layer, T5's encoder and decoder blocks, else Llama's layers."""
    base = model.base_model  # the bare transformer under any task head (T5: the model itself)
    if hasattr(base, "h"):  # GPT-2
        return list(base.h)
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT
        return list(base.encoder.layer)
    if hasattr(base, "decoder") and hasattr(base.decoder, "block"):  # T5
        return list(base.encoder.block) + list(base.decoder.block)
    if not hasattr(base, "layers"):
        raise ValueError(f"cannot find the transformer blocks of this {model.config.model_type} model: it names no "
                         "_no_split_modules and has none of h, encoder.layer, block, layers")
    return list(base.layers)


def label_head(model: PreTrainedModel) -> torch.nn.Linear:
    """A sequence or token classifier's output layer ([hidden] -> [num_labels]): the top-level Linear
    beside the body, whatever the architecture names it (`score` in Llama and Qwen2, `classifier` in
    GPT-2's token classifier and BERT)."""
    heads = [m for n, m in model.named_children() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if len(heads) != 1:
        raise ValueError(f"{type(model).__name__}: no single output layer of {model.config.num_labels} labels beside the body")
    return heads[0]


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights counted once)."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())


# T5 (relative positions) and state-space models set no limit; T5 was trained on 512 tokens, and callers only
# truncate to this, so the conservative bound costs context, never a crash.
UNBOUNDED_CONTEXT = 512
_CONTEXT_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def config_from_dict(config: dict):
    """A transformers config from a config.json's contents: no weights, no code run."""
    return AutoConfig.for_model(**config)


def context_length(model) -> int:
    """The context window in tokens of a model or its config: the first of n_positions (GPT-2; the
    lifecycle's own T5), max_position_embeddings (most), n_ctx, max_sequence_length, seq_length
    that is set, else UNBOUNDED_CONTEXT (512) for models without absolute positions (a hub T5).

    A RoBERTa-style model numbers its positions from padding_idx + 1, so given the model (not only
    its config) those padding_idx + 1 slots are taken off (roberta-base: 514 -> 512).
    """
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):  # a multimodal config: the language model's window
        config = config.get_text_config()
    limit = next((v for v in (getattr(config, f, None) for f in _CONTEXT_FIELDS) if v), UNBOUNDED_CONTEXT)
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids") and getattr(embeddings, "padding_idx", None) is not None:
        return limit - (embeddings.padding_idx + 1)  # positions padding_idx + 1 .. limit - 1
    return limit


def load_trained(model_dir) -> PreTrainedModel:
    """A lifecycle model as a user loads it, in eval mode: merged weights (safetensors), the base
    plus its soft prompt when it was prompt-tuned (a soft prompt does not fold into weights), or
    a quantized model rebuilt from its integer weights (components/core/quantize.py)."""
    model_dir = Path(model_dir)
    model_class = auto_class(model_dir)
    recipe = model_dir / RECIPE
    if recipe.exists() and json.loads(recipe.read_text())["method"] in INTEGER:  # integer weights: rebuilt, not from_pretrained
        return load_quantized(model_dir, model_class)
    model = model_class.from_pretrained(model_dir)
    adapter = model_dir / "adapter" / "adapter_config.json"
    if adapter.exists() and json.loads(adapter.read_text()).get("peft_type") == "PROMPT_TUNING":
        import peft  # deferred: peft is heavy, and only a prompt-tuned model needs it

        model = peft.PeftModel.from_pretrained(model, model_dir / "adapter")
    return model.eval()


def auto_class(model_dir):
    """The transformers Auto class that loads the model saved in `model_dir`: AutoModelForSeq2SeqLM
    for an encoder-decoder (T5, BART); for an encoder (BERT, RoBERTa), its task head's class (or the
    masked-LM head of a bare pretrained one); else AutoModelForCausalLM."""
    config = AutoConfig.from_pretrained(model_dir)
    family = family_of(config)
    if family == "seq2seq":
        return transformers.AutoModelForSeq2SeqLM
    if family == "masked":
        head = (config.architectures or [""])[0]
        for suffix in ENCODER_HEADS[1:]:  # the task heads; a masked-LM or bare encoder gets the masked-LM head
            if head.endswith(suffix):
                return getattr(transformers, f"AutoModel{suffix}")
        return transformers.AutoModelForMaskedLM
    return transformers.AutoModelForCausalLM


def weights_bytes(model_dir) -> int:
    """Bytes of a model directory's weight files (its top-level safetensors; not an adapter beside them)."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
