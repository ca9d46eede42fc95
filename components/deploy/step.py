"""Ray wiring of the deploy phase: put the approved model (and its LoRA adapter) behind the OpenAI API on Ray Serve.

A causal or seq2seq model answers the completion routes, a classifier /v1/classify (components/deploy/kinds.py).

The step starts (or updates) a Serve application, waits until it answers, points the registry
alias (`production`) at the served version and logs the endpoint to the step's run. Serve
applications outlive the driver on a cluster; locally `lifecycle run` keeps serving until Ctrl-C.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components import storage, tracking
from components.artifact import Artifact, StepContext
from components.deploy import kinds
from components.deploy.config import DeployConfig
from components.deploy.ingress import local_url, wait_ready


def run(cfg: DeployConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Serve the model the gate approved; returns an `endpoint` artifact (endpoint.json)."""
    approval = next(a for a in inputs.values() if a.kind == "approval")
    model_uri = str(approval.metrics["model_uri"])
    registered = str(approval.metrics.get("registered_model") or ctx.step)
    version = str(approval.metrics.get("registered_version") or "")
    served = cfg.served_name or registered
    metadata = {"registered_model": registered, "version": version, "run_id": str(approval.metrics.get("model_run_id", "")),
                "approved_by_run": approval.run_id}
    url = start(cfg, {"id": served, "path": model_uri, "metadata": metadata}, adapters_of(model_uri, served, metadata))
    if version:
        tracking.set_model_alias(ctx.tracking_uri, registered, cfg.alias, version)
        tracking.tag_model_version(ctx.tracking_uri, registered, version, {"lifecycle.endpoint": url})
    rag = rag_url(cfg)
    tags = {"lifecycle.endpoint": url, "lifecycle.served_model": served, **({"lifecycle.rag_endpoint": rag} if rag else {})}
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, tags)
    info = {"url": url, "served_model": served, "app_name": cfg.app_name, **metadata, "alias": cfg.alias,
            # Where a client in the workflow (an evaluate step after this one) finds the key: a path, never the key.
            **({"api_key_file": cfg.api_key_file} if cfg.api_key_file else {}),
            **({"rag_url": rag, "rag_app_name": cfg.rag.app_name} if rag else {})}
    (ctx.output_dir / "endpoint.json").write_text(json.dumps(info, indent=1))
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, info, "endpoint.json")
    return Artifact(str(ctx.output_dir), "endpoint", ctx.run_id, ctx.cache_key, info,
                    f"serving {served} v{version} at {url} (alias {cfg.alias})" + (f", RAG at {rag}" if rag else ""))


def adapters_of(model_uri: str, served: str, metadata: dict) -> dict[str, dict[str, Any]]:
    """The LoRA adapters of the model artifact at `model_uri` (a path or URI), each served over its own base model.

    `adapter/` (the one merged into the model) is served as `<served>-adapter`; a sweep's
    `trials/<trial>/adapter` as `<served>-<trial>`. The base is read from each adapter's config
    (a local path) and must be one of the artifacts beside the model (with an object store, one of
    their downloaded copies): a served model is never loaded from an arbitrary path.
    """
    model_dir = storage.localize(model_uri)
    allowed_root = storage.cache_root() if storage.is_remote(model_uri) else model_dir.parent
    found = {f"{served}-adapter": model_dir / "adapter"}
    found.update({f"{served}-{t.name}": t / "adapter" for t in sorted((model_dir / "trials").glob("*")) if t.is_dir()})
    adapters = {}
    for name, directory in found.items():
        config = directory / "adapter_config.json"
        if not config.exists():
            continue
        settings = json.loads(config.read_text())
        base = Path(settings.get("base_model_name_or_path") or "").resolve()
        if settings.get("peft_type") != "LORA" or not base.is_dir() or allowed_root.resolve() not in base.parents:
            continue
        adapters[name] = {"path": str(directory), "base_path": str(base), "metadata": {**metadata, "base": base.name}}
    return adapters


def start(cfg: DeployConfig, model: dict[str, Any], adapters: dict[str, dict[str, Any]], timeout_s: float = 180) -> str:
    """Deploy (or redeploy) the Serve application, and its RAG route when `cfg.rag` is set; returns the API's
    base URL once it answers (the route's URL is `rag_url(cfg)`)."""
    # Deferred: Ray Serve and FastAPI (the app, the RAG route) are heavy, and only deploying needs them.
    from ray import serve

    check_servable(cfg, model["path"])
    from components.deploy.app import build

    # Not beside the imports above, in a thread: Ray's first call in a process imports pydantic.v1, and an import
    # racing it in the other thread failed `lifecycle serve` with KeyError: 'pydantic.v1'.
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    targets = [serve.RunTarget(build(cfg, model, adapters), name=cfg.app_name, route_prefix="/")]
    if cfg.rag is not None:
        from components.apps import rag

        targets.append(serve.RunTarget(rag.build(cfg.rag, model, list(adapters)), name=cfg.rag.app_name, route_prefix=cfg.rag.route_prefix))
    # One call for both applications, so their replicas start (import torch, load the model) at the same
    # time: on the tiny run that took 7 s instead of 13 s one after the other.
    serve.run_many(targets)
    base = local_url(cfg.host, cfg.port)
    wait_ready(f"{base}/ready", lambda body: body.get("model") == model["id"], timeout_s, f"the endpoint at {base}")
    if cfg.rag is not None:
        url = rag_url(cfg)
        wait_ready(f"{url}/health", lambda body: body.get("status") == "ok", timeout_s, f"the RAG route at {url}")
    return f"{base}/v1"


def check_servable(cfg: DeployConfig, model_path: str) -> str:
    """The kind of the model at `model_path` (components/deploy/kinds.py), before anything is deployed.

    ValueError when no route serves it (a bare masked LM), or when `rag` is set and the model is
    not a causal LM: the RAG route writes its answers with the endpoint's causal chat model.
    """
    kind = kinds.kind_at(storage.localize(model_path))
    if cfg.rag is not None and kind != "causal":
        raise ValueError(f"field 'rag': the RAG route answers with a causal LM, and this model is a {kind} model; "
                         "leave rag out (its routes are " + ", ".join(kinds.ROUTES[kind]) + ")")
    return kind


def rag_url(cfg: DeployConfig) -> str | None:
    """The URL of the endpoint's RAG route, None when it has none."""
    return local_url(cfg.host, cfg.port) + cfg.rag.route_prefix if cfg.rag is not None else None
