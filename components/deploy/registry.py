"""Serve a registered model: from a Model Registry reference to a Ray Serve application.

Two callers share this module, so a model is served the same way whichever started it:

- ``lifecycle serve MODEL [KEY=VALUE ...]`` (workflows/cli.py) calls :func:`prepare`, then
  deploys with ``components.deploy.step.start``;
- a KubeRay ``RayService`` (cluster/kuberay/rayservice.yaml) names :func:`app` as its import
  path, ``components.deploy.registry:app``, with ``args`` such as
  ``{"model": "models:/gpt2-124m-finetune@production", "max_batch_size": 16}``.

Bad input raises ``ValueError`` with a one-line message naming the field (the CLI turns it
into its exit-2 error); this module never imports from ``workflows``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from components import storage, tracking
from components.deploy.config import DeployConfig
from components.deploy.step import adapters_of, check_servable


def deploy_config(settings: dict[str, Any], who: str = "lifecycle serve") -> DeployConfig:
    """Validate deploy settings (the fields of DeployConfig); the error names the first bad field."""
    try:
        return DeployConfig.model_validate(settings)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise ValueError(f"{who}: field '{field}': {first['msg']}" if field else f"{who}: {first['msg']}") from None


def prepare(ref: str, settings: dict[str, Any], workdir: Path,
            who: str = "lifecycle serve") -> tuple[DeployConfig, dict[str, Any], dict[str, dict[str, Any]]]:
    """(config, model, adapters) for serving the registered model `ref`.

    ref: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``NAME`` (its latest version).
    settings: DeployConfig fields, e.g. ``{"port": 8001}``.
    workdir: the lifecycle working folder; its ``mlflow.db`` is the registry unless
        ``MLFLOW_TRACKING_URI`` names a tracking server.
    model: ``{id, path, metadata}``, ``path`` the model's folder, or its object-store URI
        (checked here: it holds a complete model); adapters as from ``adapters_of``. A registered
        LoRA adapter (the fine-tune step's ``<name>-adapter``) is served as the adapter, under its
        name, over its base model (``<name>-base``), when that base is on this machine.
    """
    cfg = deploy_config(settings, who)
    workdir = Path(workdir)
    uri = tracking.existing_uri(workdir)
    where = _without_credentials(os.environ["MLFLOW_TRACKING_URI"]) if os.environ.get("MLFLOW_TRACKING_URI") else str(workdir)
    try:
        found = tracking.resolve_model(uri, ref)
    except Exception as e:  # unknown name, version or alias; an unreachable server
        raise ValueError(f"{ref}: not a registered model in {where}: {str(e).splitlines()[0]}") from None
    source = found["source"]
    try:
        model_dir = storage.localize(source)  # the path itself when local
    except FileNotFoundError:  # an object-store folder without its completion marker
        raise ValueError(f"{ref}: its files are gone ({source})") from None
    except OSError as e:  # credentials, network
        raise ValueError(f"{ref}: cannot fetch its files from {source}: {str(e).splitlines()[0]}") from None

    served = cfg.served_name or found["name"]
    metadata = {"registered_model": found["name"], "version": found["version"], "run_id": found["run_id"]}
    base = adapter_base(ref, model_dir)
    if base is not None:  # a LoRA adapter: served by its own name over its base model
        try:
            check_servable(cfg, str(base))
        except ValueError as e:
            raise ValueError(f"{who}: {ref}: {e}") from None
        model = {"id": f"{served}-base", "path": str(base), "metadata": {**metadata, "adapter": served}}
        return cfg, model, {served: {"path": str(model_dir), "base_path": str(base), "metadata": {**metadata, "base": base.name}}}
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{ref}: its files are gone ({model_dir})")

    try:
        check_servable(cfg, str(model_dir))
    except ValueError as e:
        raise ValueError(f"{who}: {ref}: {e}") from None
    # A replica may start on another node: an object-store model travels as its URI and each
    # replica fetches its own copy; a local one as its path (a folder every node sees).
    model = {"id": served, "path": source if storage.is_remote(source) else str(model_dir), "metadata": metadata}
    return cfg, model, adapters_of(source, served, metadata)


def adapter_base(ref: str, model_dir: Path) -> Path | None:
    """The base model folder of a registered LoRA adapter (adapter_config.json, no config.json); None for a model.

    ValueError when it is an adapter whose base is not on this machine, naming what to serve
    instead: the fine-tuned model it was registered beside (`<name>-adapter` is the adapter
    of `<name>`, which serves it under that id).
    """
    config = model_dir / "adapter_config.json"
    if (model_dir / "config.json").exists() or not config.exists():
        return None
    try:
        settings = json.loads(config.read_text())
    except ValueError:
        raise ValueError(f"{ref}: a LoRA adapter whose adapter_config.json is not JSON ({config})") from None
    named = str(settings.get("base_model_name_or_path") or "")
    base = Path(named).resolve() if named else None
    if settings.get("peft_type") == "LORA" and base is not None and (base / "config.json").exists():
        return base
    name = ref.removeprefix("models:/").split("/")[0].split("@")[0]
    instead = (f"serve models:/{name.removesuffix('-adapter')}/<version> instead, which serves this adapter as {name}"
               if name.endswith("-adapter") else "serve the fine-tuned model it belongs to instead")
    raise ValueError(f"{ref}: a {settings.get('peft_type') or 'PEFT'} adapter, not a model, and its base model "
                     f"({named or 'not named in adapter_config.json'}) is not on this machine: {instead}")


def app(args: dict[str, Any]):
    """Ray Serve application builder: ``import_path: components.deploy.registry:app``.

    args: ``{"model": REF, **DeployConfig fields}``. The registry is ``MLFLOW_TRACKING_URI``
    (else ``$LIFECYCLE_WORKDIR/mlflow.db``, default ``.lifecycle``). Host and port are Serve's
    own (``http_options`` of the Serve config), so those two fields are ignored here.
    """
    settings = dict(args or {})
    if settings.get("rag") is not None:
        # One import path builds one application, and the RAG route is a second one: accepting the
        # field here would silently serve no route.
        raise ValueError("serve args: field 'rag': not supported in a Serve config (RayService); start the route "
                         "with `lifecycle serve MODEL rag={}` or the deploy step's `rag` option")
    ref = settings.pop("model", None)
    if not isinstance(ref, str) or not ref:
        raise ValueError("serve args: field 'model': required, e.g. models:/NAME@production")
    cfg, model, adapters = prepare(ref, settings, Path(os.environ.get("LIFECYCLE_WORKDIR", ".lifecycle")), who="serve args")
    # Serve's proxy on a cluster listens beyond loopback whatever `host` says (it is ignored here).
    # Deferred: Ray Serve and FastAPI are heavy, and only this builder needs them.
    from components.deploy.app import build, check_exposure, node_api_key

    check_exposure(cfg.model_copy(update={"host": "0.0.0.0"}), keyed=bool(cfg.api_key_file or node_api_key(None)))

    return build(cfg, model, adapters)


def _without_credentials(uri: str) -> str:
    """`uri` with any user:password@ removed, fit for an error message."""
    parts = urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))
