"""Loading raw text documents, splitting them into train/validation, and the jsonl artifact format.

A document is a plain `str`. Every loader returns documents in a deterministic order, and every
malformed input raises `DataError` naming the file (and line or row) at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from pydoc_data.topics import topics

from components.data.config import DataConfig
from components.data.primer import primer_documents

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


class DataError(ValueError):
    """Input text that cannot be loaded; the message names the file (and line) at fault."""


def _group(pieces: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive pieces with blank lines into documents of at most ~max_chars."""
    docs, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > max_chars:
            docs.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        docs.append(current)
    return docs


def python_docs_corpus(max_chars: int = 2000) -> list[str]:
    """The CPython documentation topics shipped with every interpreter, as ~2608 paragraphs
    grouped into documents of a few hundred to `max_chars` characters (~465k chars in total).

    Topics are visited in sorted order, so the result is identical on every machine with the
    same Python version. A paragraph longer than `max_chars` is cut at line boundaries.
    """
    docs: list[str] = []
    for name in sorted(topics):
        pieces = []
        for para in _BLANK_LINES.split(topics[name]):
            para = para.strip("\n")
            if not para.strip():
                continue
            # Oversized paragraphs (long grammar listings) would otherwise become one huge document.
            pieces.extend([para] if len(para) <= max_chars else _group(para.split("\n"), max_chars))
        docs.extend(_group(pieces, max_chars))
    return docs


def read_utf8(path: Path) -> str:
    """The text of the file at `path`; DataError naming it when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e})") from e


def load_txt(path: Path) -> list[str]:
    """One document per blank-line-separated block of a UTF-8 text file."""
    return [block.strip() for block in _BLANK_LINES.split(read_utf8(path)) if block.strip()]


def load_txt_dir(path: Path) -> list[str]:
    """One document per `*.txt` file under `path` (recursive, sorted by relative path)."""
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path}: directory contains no .txt files")
    return [text.strip() for text in map(read_utf8, files) if text.strip()]


def jsonl_records(path: str | os.PathLike):
    """Yield ("path:LINE", object) for each non-blank line of a JSONL file; DataError names file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e})") from e
    # Split on "\n" only: str.splitlines would also break at U+2028 inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON: {e}") from e
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def load_jsonl(path: Path, text_field: str = "text") -> list[str]:
    """One document per line: a JSON object whose `text_field` is a string. Blank lines are skipped."""
    docs = []
    for where, record in jsonl_records(path):
        if text_field not in record:
            raise DataError(f"{where}: missing field {text_field!r} (fields: {sorted(record)})")
        if not isinstance(record[text_field], str):
            kind = type(record[text_field]).__name__
            raise DataError(f"{where}: field {text_field!r} must be a string, got {kind}")
        docs.append(record[text_field])
    return docs


def _check_strings(values: list, where: str, column: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"{where}: row {i}: column {column!r} must be a string, got {type(v).__name__}")
    return values


def load_parquet(path: Path, text_field: str = "text") -> list[str]:
    """One document per row of column `text_field` (string, no nulls)."""
    import pyarrow.parquet as pq  # deferred: pyarrow is heavy, and only a .parquet source needs it

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise DataError(f"{path}: cannot read parquet file ({e})") from e
    if text_field not in names:
        raise DataError(f"{path}: missing column {text_field!r} (columns: {names})")
    values = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    return _check_strings(values, str(path), text_field)


def load_hf(spec: str, text_field: str, split: str) -> list[str]:
    """A Hugging Face dataset given as "NAME[:CONFIG]"; needs the hub or a local datasets cache."""
    name, _, config = spec.partition(":")
    if not name:
        raise DataError('hf source must look like "hf:NAME[:CONFIG]"')
    import datasets  # deferred: datasets is heavy, and only an hf: source needs it

    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(f"hf:{spec}: cannot load split {split!r} (hub unreachable or unknown dataset?): {e}") from e
    if text_field not in ds.column_names:
        raise DataError(f"hf:{spec}: missing column {text_field!r} (columns: {ds.column_names})")
    return _check_strings(ds[text_field], f"hf:{spec}", text_field)


def _load_path(path: Path, text_field: str) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        return load_txt_dir(path)
    loaders = {".txt": load_txt, ".jsonl": lambda p: load_jsonl(p, text_field),
               ".parquet": lambda p: load_parquet(p, text_field)}
    if path.suffix not in loaders:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .txt, .jsonl, .parquet or a directory)")
    return loaders[path.suffix](path)


def load_documents(cfg: DataConfig) -> list[str]:
    """Documents of `cfg.source`, minus those under `cfg.min_chars` (stripped), capped at `cfg.max_documents`,
    then `cfg.primer_documents` generated primer documents."""
    if cfg.source == "python-docs":
        docs = python_docs_corpus()
    elif cfg.source.startswith("hf:"):
        docs = load_hf(cfg.source[3:], cfg.text_field, cfg.split)
    else:
        docs = _load_path(Path(cfg.source).expanduser(), cfg.text_field)
    docs = [d for d in docs if len(d.strip()) >= cfg.min_chars]
    if cfg.max_documents is not None:
        docs = docs[: cfg.max_documents]
    if cfg.primer_documents:
        docs += primer_documents(cfg.primer_documents, cfg.seed)
    if not docs:
        raise DataError(f"{cfg.source}: no documents with at least {cfg.min_chars} characters")
    return docs


def unit_hash(text: str, seed: int) -> float:
    """Seeded hash of `text` mapped to [0, 1); the same on every machine and Python version."""
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_hash(docs: list[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation): a document goes to validation iff its seeded hash is < validation_fraction.

    Membership depends only on each text and the seed, never on input order or the other documents
    (so appending data never moves existing documents). Within each split the input order is kept.
    With >= 2 documents both splits are non-empty: if one would be empty, the document with the
    most extreme hash is moved into it.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    u = [unit_hash(d, seed) for d in docs]
    in_val = [x < validation_fraction for x in u]
    if len(docs) >= 2 and not any(in_val):
        in_val[min(range(len(docs)), key=lambda i: (u[i], docs[i]))] = True
    elif len(docs) >= 2 and all(in_val):
        in_val[max(range(len(docs)), key=lambda i: (u[i], docs[i]))] = False
    train = [d for d, v in zip(docs, in_val) if not v]
    val = [d for d, v in zip(docs, in_val) if v]
    return train, val


def documents_digest(docs: list[str]) -> str:
    """16-hex-char digest of the documents' texts and order (length-prefixed, so boundaries count)."""
    h = hashlib.blake2b(digest_size=8)
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def write_records_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """One JSON object per line, atomically: a temp file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, docs: list[str]) -> None:
    """A split as `{"text": ...}` lines, written atomically (nothing half-written on a crash)."""
    write_records_jsonl(path, [{"text": d} for d in docs])


def read_jsonl(path: str | os.PathLike) -> list[str]:
    """Documents of a split written by `write_jsonl`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return load_jsonl(path, "text")
