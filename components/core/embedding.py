"""A sentence embedder that works offline: WordLlama's 256-d token embeddings, shipped inside its wheel.

WordLlama (`pip install wordllama`) pools static token embeddings taken from a large LM's
embedding table: about 16 MB, no GPU, thousands of sentences per second on one CPU core. Its
weights and tokenizer are files in the installed package; `WordLlama.load()` would still look
them up in a cache folder and then on the Hugging Face Hub (it looks for the tokenizer in a
folder the wheel does not have), so it is pointed at the package folder with downloads off:
nothing is fetched at run time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=4)
def _wordllama(dim: int):
    import wordllama
    from wordllama import WordLlama

    return WordLlama.load(dim=dim, cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def wordllama_embed(texts: list[str], dim: int = 256) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors; dim: 64, 128 or 256 (Matryoshka truncations of the 256-d model)."""
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    vectors = _wordllama(256).embed(list(texts), norm=False)[:, :dim]
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
