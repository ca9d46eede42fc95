"""Where a base checkpoint comes from, and whether it is one the lifecycle will load.

Three kinds of source, one folder at the end:
- a local folder in Hugging Face format;
- ``hf:ORG/NAME[@REVISION]``: the hub, through `huggingface_hub`'s cache kept in the working
  folder (``<workdir>/hub``), so a re-run and every step read one copy; the revision is pinned
  to the commit it resolved to. Set ``HF_HUB_OFFLINE=1`` to read that cache only;
- ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: a model an earlier run registered.

Only safetensors weights are taken: pickled files (``.bin``, ``.pt``) can run code when loaded,
so a checkpoint that has only those is refused, naming the file, and the hub download never
fetches them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components import tracking
from components.base.config import BaseConfig, ResolvedSource
from components.core.models import config_from_dict, family_of
from components.storage import localize

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# What a hub download fetches: configs, tokenizer files, safetensors weights; never pickles.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "merges.txt", "vocab.*"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def parse_hub(source: str) -> tuple[str, str]:
    """('ORG/NAME', revision) of 'hf:ORG/NAME[@REVISION]'; the revision defaults to main."""
    name, _, revision = source.removeprefix("hf:").partition("@")
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"field 'source': {source!r} is not hf:ORG/NAME[@REVISION]")
    return name, revision or "main"


def hub_cache(workdir: Path) -> Path:
    """The working folder's hub cache (huggingface_hub's layout: models--ORG--NAME/snapshots/<commit>)."""
    return Path(workdir) / "hub"


def check_folder(folder: Path, where: str) -> None:
    """Raise ValueError naming the file when `folder` is not a loadable Hugging Face checkpoint:
    no config.json, no safetensors weights (pickled ones named), or no tokenizer."""
    if not folder.is_dir():
        raise ValueError(f"field 'source': {where}: no such folder")
    if not (folder / "config.json").exists():
        raise ValueError(f"field 'source': {where}: no config.json in {folder} (not a Hugging Face model folder)")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p for pattern in PICKLED for p in folder.glob(pattern))
        if pickled:
            raise ValueError(f"field 'source': {pickled[0]}: pickled weights are refused (loading them can run code); "
                             "convert the checkpoint to safetensors (model.save_pretrained(..., safe_serialization=True))")
        raise ValueError(f"field 'source': {where}: no *.safetensors weights in {folder}")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ValueError(f"field 'source': {where}: no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); "
                         "save it beside the model (tokenizer.save_pretrained)")


def fingerprint(folder: Path) -> str:
    """sha256 of every file's name, size and modification time: cheap, and changes when a file does."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every weight file (the lineage record of exactly which weights came in)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        out[path.name] = h.hexdigest()
    return out


def _hub_error(source: str, error: Exception) -> ValueError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(f"field 'source': {source}: cannot be reached ({type(error).__name__}: {first}); check the name "
                      "and revision, the network or HF_TOKEN, or run where the hub cache (<workdir>/hub) has it")


def hub_config(source: str, workdir: Path) -> tuple[Path, str]:
    """(config.json path in the cache, commit) of an hf: source; downloads that one file only."""
    from huggingface_hub import hf_hub_download, list_repo_files

    repo, revision = parse_hub(source)
    try:
        path = Path(hf_hub_download(repo, "config.json", revision=revision, cache_dir=hub_cache(workdir)))
    except Exception as e:  # huggingface_hub's errors: not found, offline and not cached, HTTP, gated
        raise _hub_error(source, e) from None
    commit = path.parent.name  # .../snapshots/<commit>/config.json
    try:  # refuse a pickles-only repository before Ray starts, when the hub can be asked
        files = list_repo_files(repo, revision=commit)
    except Exception:  # offline: the folder is checked after the download instead
        files = []
    if files and not any(f.endswith(".safetensors") for f in files):
        pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickled:
            raise ValueError(f"field 'source': {source}: {pickled[0]}: only pickled weights; they are refused "
                             "(loading them can run code): pick a revision with safetensors")
    return path, commit


def hub_folder(source: str, commit: str, workdir: Path) -> Path:
    """The snapshot folder of an hf: source at `commit`, downloading what is missing (never pickles)."""
    from huggingface_hub import snapshot_download

    repo, _ = parse_hub(source)
    try:
        return Path(snapshot_download(repo, revision=commit, cache_dir=hub_cache(workdir), allow_patterns=HUB_FILES))
    except Exception as e:
        raise _hub_error(source, e) from None


def registry_folder(source: str, tracking_uri: str) -> tuple[Path, str]:
    """(folder, 'NAME/VERSION') of a models:/ source in the run's registry."""
    try:
        found = tracking.resolve_model(tracking_uri, source)
    except Exception as e:  # no such name, version or alias
        raise ValueError(f"field 'source': {source}: not in the model registry at {tracking_uri} "
                         f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    return localize(found["source"]), f"{found['name']}/{found['version']}"


def resolve(cfg: BaseConfig, workdir: Path) -> BaseConfig:
    """Find the source, check it is a safetensors checkpoint with a tokenizer, and pin it:
    returns cfg with an absolute folder path and ``resolved`` set. Raises ValueError naming the field."""
    source, revision = cfg.source, ""
    if source.startswith("hf:"):
        config_path, revision = hub_config(source, workdir)
        folder = config_path.parent  # only config.json so far; the step downloads the rest
        stamp = revision
    else:
        if source.startswith("models:/"):
            folder, revision = registry_folder(source, _registry_uri(workdir, source))
        else:
            folder = Path(source).expanduser().resolve()
            source = str(folder)
        check_folder(folder, source)
        config_path, stamp = folder / "config.json", fingerprint(folder)
    try:
        text = config_path.read_text()
        config = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"field 'source': {config_path}: not a readable config.json ({e})") from None
    if "model_type" not in config:
        raise ValueError(f"field 'source': {config_path}: no model_type (not a transformers model config)")
    facts = ResolvedSource(
        family=family_of(config_from_dict(config)), model_type=config["model_type"],
        architecture=(config.get("architectures") or [""])[0], revision=revision, fingerprint=stamp, config=text,
    )
    return cfg.model_copy(update={"source": source, "resolved": facts})


def _registry_uri(workdir: Path, source: str) -> str:
    try:
        return tracking.existing_uri(workdir)  # never creates an empty store to look in
    except ValueError as e:
        raise ValueError(f"field 'source': {source}: {e}") from None
