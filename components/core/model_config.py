"""A transformer's size as the pretrain phase takes it: pydantic only, so the spec validator imports it
without torch (the models themselves: components/core/models.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["causal", "masked", "seq2seq"]
FAMILY: dict[str, Family] = {"gpt2": "causal", "llama": "causal", "bert": "masked", "t5": "seq2seq"}


class ModelConfig(BaseModel):
    """Size of a transformer. The defaults give a ~1M-parameter GPT-2 at vocab 2048."""

    model_config = ConfigDict(extra="forbid")
    architecture: Literal["gpt2", "llama", "bert", "t5"] = Field(
        "gpt2",
        description="Transformers architecture to build; it sets the family: gpt2 and llama are causal decoders "
        "(next-token pretraining), bert a masked encoder (15% masked tokens), t5 an encoder-decoder (span corruption).",
    )
    # Upper bounds well above today's largest open models (126 layers, width 16,384, 128 heads), so
    # that a typo (n_embd: 65536, n_positions: 1000000000) is refused here, not by a planner's or a
    # worker's arithmetic later.
    n_layer: int = Field(4, ge=1, le=512, description="Transformer blocks (t5: in the encoder and in the decoder each).")
    n_embd: int = Field(128, ge=8, le=32768, description="Hidden size.")
    n_head: int = Field(4, ge=1, le=512, description="Attention heads; must divide n_embd.")
    n_positions: int = Field(128, ge=8, le=1_048_576, description="Context length in tokens.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on residuals, embeddings and attention.")

    @property
    def family(self) -> Family:
        return FAMILY[self.architecture]
