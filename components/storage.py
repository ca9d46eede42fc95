"""Where artifacts and checkpoints live: a local or shared directory, or an object store.

A storage root is a plain path (local disk, NFS, a mounted bucket) or a URI that pyarrow's
filesystems understand (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///path``).
Steps always write a local directory; with an object store the engine uploads it and a
consumer on any node gets a local copy through :func:`localize`, downloaded once per node.
Credentials and endpoints come from the usual environment (``AWS_*``, ``GOOGLE_*``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

# Written last by `upload`: an object store has no atomic rename, so a directory without it
# is a partial upload (a crashed step) and is never read.
COMPLETE = ".lifecycle-complete"


def is_remote(uri: str) -> bool:
    """True for an object-store URI (s3://, gs://, ...); False for a path or file:// URI."""
    return urlparse(str(uri)).scheme not in ("", "file")


def local_path(uri: str) -> Path:
    """The path of a local path or file:// URI."""
    return Path(str(uri).removeprefix("file://"))


def as_uri(location: str) -> str:
    """A URI for `location`: object-store URIs as they are, paths as file:// URIs."""
    return str(location) if is_remote(location) else local_path(location).resolve().as_uri()


def join(root: str, *parts: str) -> str:
    """`root` / parts, keeping a URI a URI."""
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(local_path(root).joinpath(*parts))


def _fs(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # (filesystem, path inside it)


def exists(uri: str) -> bool:
    """A local directory that exists, or a remote one whose upload completed."""
    if not is_remote(uri):
        return local_path(uri).exists()
    import pyarrow.fs

    fs, path = _fs(uri)
    return fs.get_file_info(f"{path}/{COMPLETE}").type == pyarrow.fs.FileType.File


def upload(local: Path, uri: str) -> None:
    """Copy the directory `local` to the remote `uri` (replacing what was there), marker last."""
    import pyarrow.fs

    fs, path = _fs(uri)
    remove(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, destination_filesystem=fs, use_threads=True)
    with fs.open_output_stream(f"{path}/{COMPLETE}") as out:
        out.write(b"")


@contextmanager
def writing(uri: str) -> Iterator[Path]:
    """A local directory to write `uri`'s files into: the path itself, or a temporary folder
    uploaded (marker last) when the block ends without an error."""
    if not is_remote(uri):
        local_path(uri).mkdir(parents=True, exist_ok=True)
        yield local_path(uri)
        return
    scratch = Path(tempfile.mkdtemp(prefix="upload-"))
    try:
        yield scratch
        upload(scratch, uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def listdir(uri: str) -> list[str]:
    """Names of the directories directly under `uri` (none if it does not exist)."""
    if not is_remote(uri):
        root = local_path(uri)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def remove(uri: str) -> None:
    """Delete a directory (local or remote); nothing if it is not there."""
    if not is_remote(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def download(uri: str, local: Path) -> None:
    """Copy the directory at `uri` (local or remote) into the local directory `local`."""
    local.mkdir(parents=True, exist_ok=True)
    if not is_remote(uri):
        shutil.copytree(local_path(uri), local, dirs_exist_ok=True)
        return
    import pyarrow.fs

    fs, path = _fs(uri)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, use_threads=True)


def cache_root() -> Path:
    """Node-local folder of downloaded artifacts (LIFECYCLE_CACHE, default ~/.cache/llm-lifecycle)."""
    return Path(os.environ.get("LIFECYCLE_CACHE", Path.home() / ".cache" / "llm-lifecycle")) / "artifacts"


def localize(uri: str) -> Path:
    """A local directory holding `uri`'s files: the path itself when local, else a copy
    downloaded into :func:`cache_root` (once per node; artifacts never change under a URI
    because their names carry the producing step's cache key)."""
    if not is_remote(uri):
        return local_path(uri)
    target = cache_root() / hashlib.sha256(str(uri).encode()).hexdigest()[:24]
    if target.exists():
        return target
    if not exists(uri):
        raise FileNotFoundError(f"{uri}: no complete artifact there")
    partial = target.with_name(f".{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        download(uri, partial)
        os.replace(partial, target)  # a concurrent download of the same URI may win: same files
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not target.exists():
            raise
    return target
