"""Byte-level BPE training and packing of token ids into fixed-length blocks for causal LM pretraining."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from components.data.config import TokenizerConfig
from components.data.instructions import CHAT_TEMPLATE


def train_bpe(docs: list[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE on `docs`; len(result) <= cfg.vocab_size.

    The special tokens get the first ids (eos = 0), then the 256 byte symbols, then merges.
    Any string round-trips: tok.decode(tok.encode(s)) == s, since every byte is in the vocabulary
    and no prefix space or cleanup is applied. `save_pretrained` writes Hugging Face format.
    """
    if not docs:
        raise ValueError("train_bpe needs at least one document")
    specials = cfg.special_tokens()
    backend = Tokenizer(models.BPE(unk_token=cfg.unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets covering the leading space of "Ġword" tokens.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=cfg.bos_token,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        unk_token=cfg.unk_token,
        **({"mask_token": cfg.mask_token} if cfg.mask_token else {}),
        extra_special_tokens=[f"<extra_id_{i}>" for i in range(cfg.sentinel_tokens)],
        model_max_length=cfg.model_max_length,
        clean_up_tokenization_spaces=False,  # cleanup would rewrite " ." to "." and break round-trips
    )
    # Saved with the tokenizer, so every model of the lifecycle renders chat messages the way
    # fine-tuning formats prompts (and the OpenAI chat endpoint can use it).
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenize_and_pack(docs: list[str], tokenizer: PreTrainedTokenizerFast, block_size: int) -> np.ndarray:
    """Token ids of all documents, each followed by eos, cut into contiguous blocks.

    Returns int32 [n_blocks, block_size] with n_blocks = total_tokens // block_size; the tail that
    does not fill a block is dropped (so n_blocks may be 0). Blocks cross document boundaries,
    as usual for pretraining; eos tells the model where one document ends.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos token")
    # The backend encodes in parallel and skips the model_max_length warning meant for model inputs.
    encodings = tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    pieces = [np.append(np.asarray(e.ids, dtype=np.int32), np.int32(eos)) for e in encodings]
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n_blocks = len(ids) // block_size
    return ids[: n_blocks * block_size].reshape(n_blocks, block_size)


def token_stream(docs: list[str], tokenizer: PreTrainedTokenizerFast, max_tokens: int) -> list[int]:
    """The first `max_tokens` token ids of the documents joined by eos (one stream, as pretraining reads them)."""
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(encoding.ids + [tokenizer.eos_token_id])
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]
