"""Retrieval for RAG: read a document collection safely, chunk it, embed it into a FAISS index, search, score.

    collect_documents(root, patterns) -> {relative path: text}     never leaves `root`
    chunk_text(text, max_chars, overlap) -> [chunk]                 paragraph-aware, overlapping
    build_index(chunks, embed, kind) -> Index                       FAISS inner-product over unit vectors
    search(index, embed, query, k, sources) -> [Hit]                best first
    recall_at_k(retrieved, relevant, k) -> float                    share of questions with a relevant hit

`embed` is any function from a list of n texts to an (n, d) float32 array; the vectors are
L2-normalised here, so inner product is cosine similarity.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

Embed = Callable[[list[str]], np.ndarray]


class UnsafePath(ValueError):
    """A path that would leave the collection (a symlink, `..`, an absolute path)."""


def inside(root: Path, relative: str) -> Path:
    """`root / relative` when it stays inside `root` with no symlink on the way; else `UnsafePath`.

    Checked on the text first (no absolute path, no `..`), then on the file system (no component
    is a symlink, and the resolved path is under the resolved root), so neither a crafted name
    nor a link planted in the collection reaches a file outside it.
    """
    rel = PurePosixPath(relative.replace("\\", "/"))
    if not relative or rel.is_absolute() or ".." in rel.parts or "\x00" in relative:
        raise UnsafePath(f"{relative!r} is not a relative path inside the collection")
    root = Path(root)
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise UnsafePath(f"{relative!r}: {path.relative_to(root)} is a symbolic link")
    if root.resolve() not in path.resolve().parents:
        raise UnsafePath(f"{relative!r} resolves outside the collection")
    return path


def collect_documents(root: str | Path, patterns: Sequence[str] = ("**/*.txt", "**/*.md"),
                      max_bytes: int = 2_000_000) -> dict[str, str]:
    """{path relative to root: text} of the files under `root` matching `patterns`, sorted by path.

    Refuses (`UnsafePath`) a collection holding a symbolic link anywhere, so nothing outside
    `root` is ever read; a file over `max_bytes` is refused too (ValueError).
    """
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        raise UnsafePath(f"collection {root} must be a real directory (not a symbolic link)")
    for path in root.rglob("*"):  # rglob does not follow directory links, but would list them
        if path.is_symlink():
            raise UnsafePath(f"collection {root} holds a symbolic link: {path.relative_to(root)}")
    docs = {}
    for pattern in patterns:
        for path in root.glob(pattern):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and relative not in docs:
                path = inside(root, relative)
                if path.stat().st_size > max_bytes:
                    raise ValueError(f"{relative}: {path.stat().st_size} bytes, above the limit of {max_bytes}")
                docs[relative] = path.read_text(encoding="utf-8", errors="replace")
    if not docs:
        raise ValueError(f"no documents matching {list(patterns)} under {root}")
    return dict(sorted(docs.items()))


_PARAGRAPHS = re.compile(r"\n\s*\n")


def chunk_text(text: str, max_chars: int = 800, overlap: int = 100) -> list[str]:
    """Chunks of at most `max_chars` characters, cut at paragraph breaks where possible.

    Paragraphs are packed greedily; a paragraph longer than `max_chars` is cut into windows
    of `max_chars` that overlap by `overlap` characters, so a sentence at a cut is whole in one
    of them. Empty text gives no chunks.
    """
    if not 0 <= overlap < max_chars:
        raise ValueError(f"need 0 <= overlap < max_chars, got overlap={overlap}, max_chars={max_chars}")
    pieces: list[str] = []
    for para in _PARAGRAPHS.split(text):
        para = para.strip()
        if len(para) <= max_chars:
            pieces.extend([para] if para else [])
        else:
            step = max_chars - overlap
            pieces.extend(para[i:i + max_chars] for i in range(0, len(para) - overlap, step))
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks


@dataclass
class Chunk:
    source: str  # path relative to the collection root
    position: int  # index of the chunk within its document, from 0
    text: str


@dataclass
class Index:
    """A FAISS index over `chunks` (row i of the index is chunks[i])."""

    faiss_index: object
    chunks: list[Chunk]
    dim: int
    kind: str
    sources: dict[str, list[int]] = field(default_factory=dict)  # source -> its rows


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # cosine similarity in [-1, 1]
    row: int


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def build_index(documents: dict[str, str], embed: Embed, kind: str = "flat", max_chars: int = 800,
                overlap: int = 100, batch: int = 256) -> Index:
    """Chunk every document, embed the chunks and add them to a FAISS inner-product index.

    kind: "flat" (exact search; right up to ~1e5 chunks) or "hnsw" (approximate graph search
    for larger collections, M=32).
    """
    import faiss

    chunks = [Chunk(src, i, t) for src, text in documents.items() for i, t in enumerate(chunk_text(text, max_chars, overlap))]
    if not chunks:
        raise ValueError("the documents hold no text")
    vectors = np.concatenate([_unit(embed([c.text for c in chunks[i:i + batch]])) for i in range(0, len(chunks), batch)])
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"unknown index kind {kind!r} (flat or hnsw)")
    index.add(vectors)
    sources: dict[str, list[int]] = {}
    for row, c in enumerate(chunks):
        sources.setdefault(c.source, []).append(row)
    return Index(index, chunks, dim, kind, sources)


def search(index: Index, embed: Embed, query: str, k: int = 4, sources: Sequence[str] | None = None) -> list[Hit]:
    """The `k` chunks most similar to `query`, best first; with `sources`, only chunks of those documents."""
    import faiss

    vector = _unit(embed([query]))
    if sources is None:
        scores, rows = index.faiss_index.search(vector, min(k, len(index.chunks)))
    else:
        unknown = sorted(set(sources) - set(index.sources))
        if unknown:
            raise KeyError(f"not in the collection: {unknown[0]!r}")
        allowed = np.array(sorted(r for s in sources for r in index.sources[s]), dtype=np.int64)
        params = (faiss.SearchParametersHNSW if index.kind == "hnsw" else faiss.SearchParameters)(
            sel=faiss.IDSelectorBatch(allowed))
        scores, rows = index.faiss_index.search(vector, min(k, len(allowed)), params=params)
    return [Hit(index.chunks[r], float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0]


def recall_at_k(retrieved: Sequence[Sequence[str]], relevant: Sequence[str | set[str]], k: int) -> float:
    """Share of questions whose top-`k` retrieved sources include a relevant one.

    retrieved[i]: the sources of question i's hits, best first; relevant[i]: its relevant
    source (or set of sources). With one relevant document per question this is recall@k.
    """
    if len(retrieved) != len(relevant) or not retrieved:
        raise ValueError(f"need as many retrieval lists as questions (> 0), got {len(retrieved)} and {len(relevant)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = 0
    for got, want in zip(retrieved, relevant):
        want = {want} if isinstance(want, str) else set(want)
        hits += bool(want & set(got[:k]))
    return hits / len(retrieved)
