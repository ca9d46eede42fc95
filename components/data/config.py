"""Configuration of the `data` and `tokenizer` phases (pydantic v2, strict: unknown keys are errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DataConfig(BaseModel):
    """Where the text comes from and how it is split into train/validation."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "python-docs",
        description=(
            'Text source: "python-docs" (the CPython documentation topics bundled with the '
            "interpreter, always offline); a local path to a .txt, .jsonl or .parquet file or a "
            'directory of .txt files; or "hf:NAME[:CONFIG]" for a Hugging Face dataset '
            "(needs the hub or a local cache)."
        ),
    )
    text_field: str = Field(
        "text", description="Field (jsonl) or column (parquet, Hugging Face) holding the document text."
    )
    split: str = Field("train", description='Hugging Face dataset split to read (only for "hf:" sources).')
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Expected fraction of documents held out for validation, in (0, 0.5)."
    )
    seed: int = Field(0, description="Seed of the hash-based train/validation split; same seed, same split.")
    max_documents: int | None = Field(
        None, ge=1, description="Keep at most this many documents (in source order) before splitting; None keeps all."
    )
    min_chars: int = Field(
        1, ge=1, description="Drop documents shorter than this many characters after stripping whitespace."
    )
    primer_documents: int = Field(
        0, ge=0,
        description="Add this many generated everyday-English documents (components/data/primer.py: the words, "
        "glossary, sums and record layouts the bundled instruction tasks use) to the source's; 0 adds none.",
    )


class TokenizerConfig(BaseModel):
    """Byte-level BPE tokenizer trained on the train split."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(
        2048,
        ge=260,
        le=1_000_000,
        description="Total vocabulary size including the 256 byte tokens and the special tokens.",
    )
    min_frequency: int = Field(2, ge=1, description="A pair must occur at least this often to be merged.")
    model_max_length: int = Field(
        1024, ge=1, description="Longest sequence in tokens the model is meant to see (stored with the tokenizer)."
    )
    bos_token: str = Field("<|endoftext|>", description="Beginning-of-sequence token (GPT-2 style: same as eos).")
    eos_token: str = Field("<|endoftext|>", description="End-of-sequence token; also separates packed documents.")
    pad_token: str = Field("<|pad|>", description="Padding token; kept distinct from eos so padding can be masked.")
    unk_token: str = Field(
        "<|unk|>", description="Unknown token; never produced by byte-level BPE but expected by some tools."
    )
    mask_token: str | None = Field(
        None, description='Mask token of masked-LM pretraining (a bert model needs one, e.g. "<mask>"); None adds none.'
    )
    sentinel_tokens: int = Field(
        0, ge=0, le=1000,
        description="T5 span-corruption sentinels <extra_id_0> ... added as special tokens (a t5 model needs them; 32 is plenty "
        "at 128-token blocks); 0 adds none.",
    )

    @model_validator(mode="after")
    def _pad_differs_from_eos(self) -> TokenizerConfig:
        # A shared pad/eos id would make loss masking of padding also hide real end-of-text tokens.
        if self.pad_token == self.eos_token:
            raise ValueError("pad_token must differ from eos_token")
        return self

    def special_tokens(self) -> list[str]:
        """Distinct special tokens in a fixed order (they get the first ids)."""
        extra = [self.mask_token] if self.mask_token else []
        extra += [f"<extra_id_{i}>" for i in range(self.sentinel_tokens)]
        return list(dict.fromkeys([self.eos_token, self.bos_token, self.pad_token, self.unk_token, *extra]))
