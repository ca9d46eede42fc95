"""The Ray Serve application: a FastAPI ingress speaking the OpenAI HTTP API over one model.

    GET  /v1/models            the served model and its LoRA adapters, with registry metadata
    POST /v1/completions       prompt(s) (texts or token ids) -> text; `stream: true` sends server-sent
                               events; `logprobs`, `echo` (with `max_tokens: 0`: the prompt scored only)
    POST /v1/chat/completions  messages -> the model's chat template -> text; `logprobs`, `top_logprobs`
    POST /v1/classify          texts (or text pairs) -> labels, or words -> entities (classifiers)
    GET  /health, /ready       liveness; readiness (model loaded)

Requests merge into dynamic batches (`serve.batch`): one `generate` call per sampling setting
in a batch; a request whose generation fails gets its own error and the others in its batch
their answers. Adapters are multiplexed (`serve.multiplexed`) over one copy of their base model,
chosen by the request's `model`. Overload is answered with 429 + Retry-After by the replica
(more than `max_ongoing_requests` generations in flight, a request counting prompts x n and a
stream holding its slot until it ends) or 503 by Serve (its queue is full), never a hang.
Before a body is read, an ASGI middleware checks the API key (401) and the body's size (413)
on every route but the probes (/health, /ready).
Only the models named at deploy time can be served: a request names an id, never a path.
The model's kind (components/deploy/kinds.py) sets its routes: a causal or seq2seq (T5) model
answers the two completion routes, a classifier /v1/classify; another route is a 404 that says
which routes the model serves.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.
import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from components.core.models import context_length, load_trained
from components.deploy import api, classify, kinds
from components.deploy.config import DeployConfig
from components.deploy.generation import (
    Completion,
    Params,
    batch_wait_s,
    count_tokens,
    generate,
    stream,
)
from components.storage import localize


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, api.error_body(message, kind, param, code), headers


app = FastAPI(title="llm-lifecycle", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError):
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError):
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return JSONResponse(api.error_body(f"{param or 'body'}: {first['msg']}", param=param), status_code=422)


def add_error_handlers(other: FastAPI) -> FastAPI:
    """Answer `ApiError` and invalid bodies on `other` (a route served beside this one) as this app does."""
    other.add_exception_handler(ApiError, _api_error)
    other.add_exception_handler(RequestValidationError, _invalid)
    return other


def authorize(request: Request, api_key: str | None) -> None:
    """Raise a 401 `ApiError` unless `api_key` is None or the request carries it as a bearer token."""
    if api_key is not None and not _key_matches(request.headers.get("authorization", "").encode(), api_key):
        raise ApiError(401, _NO_KEY, kind="authentication_error", code="invalid_api_key")


_NO_KEY = "missing or wrong API key (Authorization: Bearer ...)"
OPEN_PATHS = ("/health", "/ready")  # the probes answer without a key: a kubelet sends none
log = logging.getLogger("ray.serve")


def _key_matches(authorization: bytes, api_key: str) -> bool:
    return hmac.compare_digest(authorization, f"Bearer {api_key}".encode())


async def _reply(send, status: int, body: dict, headers: tuple = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware: the API key (401) and the body's size (413), before the body is read or parsed.

    A body without a Content-Length (chunked) is read up to the limit, then handed on; one past
    it is refused without reading the rest. The probes in OPEN_PATHS pass unchecked.
    """

    # Set by the replica (one per process). A class attribute, not a module global: Ray pickles
    # the deployment class by value, with copies of the globals it names, and this class by reference.
    settings: ClassVar[dict[str, Any]] = {"api_key": None, "max_body_bytes": None}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # ASGI gives the names in lower case
        key, limit = Guard.settings["api_key"], Guard.settings["max_body_bytes"]
        if key is not None and not _key_matches(headers.get(b"authorization", b""), key):
            return await _reply(send, 401, api.error_body(_NO_KEY, "authentication_error", code="invalid_api_key"),
                                ((b"www-authenticate", b"Bearer"),))
        if limit is None:
            return await self.app(scope, receive, send)
        too_large = api.error_body(f"the request body is larger than this server's limit of {limit} bytes",
                                   code="request_too_large")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _reply(send, 400, api.error_body("Content-Length is not a number"))
        if declared > limit:
            return await _reply(send, 413, too_large)
        received, size = [], 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":  # the client left
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _reply(send, 413, too_large)
            if not message.get("more_body"):
                break

        async def replay():
            return received.pop(0) if received else await receive()

        return await self.app(scope, replay, send)


app.add_middleware(Guard)


def is_loopback(host: str) -> bool:
    """Whether an address to bind is reachable from this machine only (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(cfg: DeployConfig, keyed: bool) -> None:
    """ValueError when the endpoint would answer anyone: bound beyond loopback, no API key, and
    `allow_unauthenticated` not set."""
    if not keyed and not is_loopback(cfg.host) and not cfg.allow_unauthenticated:
        raise ValueError(f"field 'host': serving on {cfg.host} without an API key would answer anyone who reaches "
                         "this machine: set LIFECYCLE_API_KEY (or api_key_file), bind 127.0.0.1, or set "
                         "allow_unauthenticated: true")


def node_api_key(key_file: str | None) -> str | None:
    """The API key on this node: the contents of `key_file` when it is here, else $LIFECYCLE_API_KEY, else None.

    RuntimeError when `key_file` is named but neither it nor the variable is on this node: a key
    was meant, and a replica without it would answer anyone.
    """
    if key_file and Path(key_file).is_file():
        key = Path(key_file).read_text().strip()
        if not key:
            raise RuntimeError(f"the API key file {key_file} is empty")
        return key
    key = os.environ.get("LIFECYCLE_API_KEY") or None
    if key is None and key_file:
        raise RuntimeError(f"the API key file {key_file} is not on this node and LIFECYCLE_API_KEY is not set here: "
                           "put the file, or set the variable, on every node that runs a replica")
    return key


def private_key_file(key: str) -> str:
    """A private file (mode 0600 in a 0700 folder of this user's) holding `key`; its path.

    So a replica on this machine reads the key from disk: a key passed in the replica's
    runtime_env would be shown on the Ray dashboard. Named by the key's hash, so redeploying
    with the same key rewrites the same file.
    """
    folder = Path(tempfile.gettempdir()) / f"lifecycle-keys-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return str(path)


def build(cfg: DeployConfig, model: dict[str, Any], adapters: dict[str, dict[str, Any]]) -> serve.Application:
    """The Serve application for `model` ({id, path, metadata}) and `adapters` ({id: {path, base_path, metadata}}).

    The API key is `cfg.api_key_file`'s, or $LIFECYCLE_API_KEY here, which goes to the replicas as a
    private file on this machine (each other node's replicas read the variable from their own
    environment); never in the runtime_env. ValueError from `check_exposure`.
    """
    key = os.environ.get("LIFECYCLE_API_KEY") or None
    if cfg.api_key_file is None and key is not None:
        cfg = cfg.model_copy(update={"api_key_file": private_key_file(key)})
    check_exposure(cfg, keyed=cfg.api_key_file is not None)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        "max_ongoing_requests": cfg.max_ongoing_requests + 1,  # one above ours: the replica, not Serve, says 429 first
        "max_queued_requests": cfg.max_queued_requests,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return OpenAIServer.options(**options).bind(cfg.model_dump(), model, adapters)


def _check(body) -> None:
    """The request's own 400s (`api.Unsupported`): fields this server would otherwise have to ignore."""
    try:
        body.check()
    except api.Unsupported as e:
        raise ApiError(400, str(e), param=e.param) from None


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(done: list[Completion], n: int) -> api.Usage:
    # Each prompt is counted once however many completions (n) it has, as OpenAI does.
    prompt = sum(c.prompt_tokens for c in done[::n])
    completion = sum(c.completion_tokens for c in done)
    return api.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class Slot:
    """`generations` counted in flight on `server` until released (at most once; on garbage
    collection at the latest, e.g. a stream whose client left before it started)."""

    def __init__(self, server, generations: int):
        self.server, self.generations = server, generations

    def release(self) -> None:
        if self.generations:
            self.server.in_flight -= self.generations
            self.generations = 0

    def hand_over(self) -> "Slot":
        """A new Slot holding these generations (a stream's, released when it ends); this one then holds none."""
        generations, self.generations = self.generations, 0
        return Slot(self.server, generations)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


MIN_TEMPERATURE = 1e-3


def _answered(results: list) -> list:
    """`results` of a request's batched calls, or the first one's error raised."""
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


async def isolate(run, items: list) -> list:
    """`await run(items)`: one output per item; when it raises, each item alone, so only the failing
    ones fail. An item's failure is its output: the ApiError raised, or a 500 ApiError for any other
    exception (logged with its traceback)."""
    try:
        return list(await run(items))
    except ApiError as e:
        return [e] * len(items)
    except Exception as e:
        if len(items) > 1:
            return [out for item in items for out in await isolate(run, [item])]
        log.exception("request failed in its batch")
        return [ApiError(500, f"the server failed on this request: {type(e).__name__}", kind="server_error")]


class _Adapter:
    """A multiplexed adapter: its weights live inside the shared PeftModel; eviction deletes them."""

    def __init__(self, server, name: str):
        self.server, self.name = server, name

    def __del__(self):
        if self.name in getattr(self.server.peft, "peft_config", {}):
            self.server.peft.delete_adapter(self.name)


@serve.deployment
@serve.ingress(app)
class OpenAIServer:
    def __init__(self, settings: dict, model: dict, adapters: dict):
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(max(1, int(settings["cpus_per_replica"])))
        self.cfg = DeployConfig.model_validate(settings)
        self.name, self.metadata = model["id"], model.get("metadata", {})
        path = localize(model["path"])  # a copy on this node when the run's storage is an object store
        self.kind = kinds.kind_at(path)
        # As every phase loads a lifecycle model (safetensors only): a quantized one is rebuilt from its integer
        # weights, which from_pretrained would leave as fresh random layers, and a prompt-tuned one keeps its prompt.
        self.model = load_trained(path)
        self.labels = kinds.labels(self.model) if self.kind in kinds.CLASSIFIERS else None
        if self.cfg.gpus_per_replica > 0 and torch.cuda.is_available():
            self.model.to("cuda")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.context = context_length(self.model)
        # Ids a token-id prompt may hold: both the tokenizer (to decode them) and the embedding (to read them) know them.
        self.vocab_size = min(len(self.tokenizer), self.model.get_input_embeddings().num_embeddings)
        self.adapters = adapters
        # PEFT keeps each adapter as a submodule named after it, and a module name cannot hold a "."
        # (a sweep trial's id has its learning rate in it: r8-alpha16-lr0.01).
        self.peft_names = {model_id: f"adapter_{i}" for i, model_id in enumerate(adapters)}
        self.peft = None  # one base model under every adapter, loaded with the first adapter request
        self.lock = asyncio.Lock()  # the model is used by one generate call at a time
        self.in_flight = 0  # generations admitted and not yet answered (streams until they end)
        self.api_key = node_api_key(self.cfg.api_key_file)
        check_exposure(self.cfg, keyed=self.api_key is not None)
        Guard.settings = {"api_key": self.api_key, "max_body_bytes": self.cfg.max_body_bytes}
        self.max_chars = self.cfg.max_chars_per_token * self.context
        # Exported with Serve's own metrics (requests, latency, queue) on Ray's Prometheus endpoint.
        from ray.serve import metrics

        self.generated_tokens = metrics.Counter("lifecycle_generated_tokens", description="Tokens generated.", tag_keys=("model",))
        self.batch_size = metrics.Histogram("lifecycle_batch_size", description="Requests per generate batch.",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.batched_generate.set_max_batch_size(self.cfg.max_batch_size)
        self.batched_classify.set_max_batch_size(self.cfg.max_batch_size)
        self.last_batch = (0, 0.0)  # (requests, time.monotonic() at its end): sets the next batch's wait

    # --- routes ---------------------------------------------------------------------------

    @app.get("/health")
    def health(self):
        return {"status": "ok"}

    @app.get("/ready")
    def ready(self):
        return {"status": "ready", "model": self.name}

    @app.get("/v1/models")
    def models(self):
        entries = [(self.name, self.metadata)] + [(k, v.get("metadata", {})) for k, v in self.adapters.items()]
        extra = {"kind": self.kind, "routes": list(kinds.ROUTES[self.kind]), **({"labels": self.labels} if self.labels else {})}
        return {"object": "list", "data": [{"id": k, "object": "model", "created": 0, "owned_by": "llm-lifecycle",
                                            "metadata": meta, **extra} for k, meta in entries]}

    @app.post("/v1/completions")
    async def completions(self, body: api.CompletionRequest):
        self._route("/v1/completions")
        _check(body)
        if body.echo and self.kind == "seq2seq":
            raise ApiError(400, "echo: an encoder-decoder model reads the prompt with its encoder, so it has no prompt "
                           "to echo or score", param="echo")
        params = self._params(body, body.max_tokens, logprobs=body.logprobs, echo=body.echo)
        if body.stream and (len(body.prompt) > 1 or body.n > 1):
            raise ApiError(400, "stream supports one prompt and n=1", param="stream")
        for p in body.prompt:
            if isinstance(p, str):
                self._check_chars(len(p), "prompt")
        with self._admit(len(body.prompt) * body.n) as slot:  # before tokenizing: a busy server spends nothing on it
            prompts = [self._check_prompt(p, params) for p in body.prompt]
            if body.stream:
                return self._sse(body.model, prompts[0], params, chat=False, slot=slot.hand_over())
            self._set_batch_wait()
            done = await asyncio.gather(*(self.batched_generate(body.model, p, params) for p in prompts for _ in range(body.n)))
        done = _answered(done)
        logprobs = None if body.logprobs is None else [
            api.completion_logprobs(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs,
                                    c.logprobs.text_offset) for c in done]
        return api.completion_body(body.model, [(c.text, c.finish_reason) for c in done], _usage(done, body.n),
                                   logprobs=logprobs)

    @app.post("/v1/chat/completions")
    async def chat(self, body: api.ChatCompletionRequest):
        self._route("/v1/chat/completions")
        _check(body)
        if body.messages[-1].role == "assistant":
            raise ApiError(400, "the last message must not be the assistant's", param="messages")
        params = self._params(body, body.max_completion_tokens or body.max_tokens, logprobs=body.top_k())
        if body.stream and body.n > 1:
            raise ApiError(400, "stream supports n=1", param="stream")
        self._check_chars(sum(len(m.content) for m in body.messages), "messages")
        with self._admit(body.n) as slot:
            prompt = self.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False,
                                                        add_generation_prompt=True)
            prompt = self._check_prompt(prompt, params)
            if body.stream:
                return self._sse(body.model, prompt, params, chat=True, slot=slot.hand_over())
            self._set_batch_wait()
            done = await asyncio.gather(*(self.batched_generate(body.model, prompt, params) for _ in range(body.n)))
        done = _answered(done)
        logprobs = None if params.logprobs is None else [
            api.chat_logprobs(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.top_logprobs) for c in done]
        return api.chat_body(body.model, [(c.text, c.finish_reason) for c in done], _usage(done, body.n), logprobs=logprobs)

    @app.post("/v1/classify")
    async def classify_texts(self, body: api.ClassifyRequest):
        self._route("/v1/classify")
        model_id = body.model or self.name
        if model_id != self.name:
            raise ApiError(404, f"model {model_id!r} is not served here (see GET /v1/models)", param="model",
                           code="model_not_found")
        items = body.items()
        if self.kind == "token-classification" and any(pair is not None for _, pair in items):
            raise ApiError(400, "a token classifier labels the words of one text: send texts, not text pairs", param="input")
        for i, (text, pair) in enumerate(items):
            self._check_chars(len(text) + len(pair or ""), f"input {i}", param="input")
        with self._admit(1):  # one forward pass over the inputs
            for i, item in enumerate(items):
                tokens = classify.input_tokens(self.tokenizer, item)
                if tokens > self.context:
                    raise ApiError(400, f"input {i} ({tokens} tokens) exceeds the model's context of {self.context} "
                                   "tokens", param="input", code="context_length_exceeded")
            self._set_batch_wait(self.batched_classify)
            done = _answered(await asyncio.gather(*(self.batched_classify(item) for item in items)))
        if self.kind == "sequence-classification":
            data = [api.LabelScore(index=i, label=label, score=score, scores=scores)
                    for i, scores in enumerate(done) for label, score in [classify.best(scores)]]
        else:
            data = [api.Tagged(index=i, entities=[
                        api.Entity(word=w.word, entity=w.entity, start=w.start, end=w.end, score=w.score)
                        for w in classify.entities(text, words, body.aggregation)])
                    for i, ((text, _), words) in enumerate(zip(items, done))]
        return api.classify_body(model_id, data)

    # --- batching and models ----------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # size set from the config in __init__, wait per request
    async def batched_classify(self, items: list[classify.Item]) -> list:
        """A dynamic batch of classifier inputs: one forward pass; label probabilities, or labelled words, per input."""
        self.batch_size.observe(len(items))

        async def run(rows):
            async with self.lock:
                # On the event loop, as generation is (see batched_generate).
                if self.kind == "sequence-classification":
                    return classify.classify(self.model, self.tokenizer, rows, self.labels)
                return classify.tag(self.model, self.tokenizer, [text for text, _ in rows], self.labels)

        out = await isolate(run, items)
        self.last_batch = (len(items), time.monotonic())
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # size set from the config in __init__, wait per request
    async def batched_generate(self, models: list[str], prompts: list[str | list[int]], params: list[Params]) -> list[Completion]:
        """A dynamic batch: one generate call per (model, sampling setting); seeded requests alone.

        Each request's result is its Completion, or the ApiError of its own failure: one request
        that fails (in a group, found by generating that group's prompts one by one) fails alone.
        """
        groups: dict[tuple, list[int]] = {}
        for i, (m, p) in enumerate(zip(models, params)):
            groups.setdefault((m, p, i if p.seed is not None else None), []).append(i)
        results: list[Completion | ApiError | None] = [None] * len(prompts)
        self.batch_size.observe(len(prompts))
        for (model_id, p, _), rows in groups.items():
            async def run(texts, model_id=model_id, p=p):
                model = await self._model(model_id)
                async with self.lock:
                    # On the event loop, not in a thread: a generating thread would hold the GIL so
                    # much that new requests stop reaching this batch queue (see docs/architecture.md).
                    return self._run(model, model_id, texts, p)

            out = await isolate(run, [prompts[i] for i in rows])
            for i, c in zip(rows, out):
                results[i] = c
            generated = sum(c.completion_tokens for c in out if isinstance(c, Completion))
            if generated:  # Ray's Counter refuses an increment of 0, which scoring a prompt (max_tokens 0) makes
                self.generated_tokens.inc(generated, tags={"model": model_id})
        self.last_batch = (len(prompts), time.monotonic())
        return results

    def _set_batch_wait(self, batched=None) -> None:
        """Before a request joins the batch queue: wait for a fuller batch only under concurrent load."""
        size, ended = self.last_batch
        (batched or self.batched_generate).set_batch_wait_timeout_s(
            batch_wait_s(size, time.monotonic() - ended, self.cfg.batch_wait_timeout_s))

    def _run(self, model, model_id: str, prompts: list[str | list[int]], params: Params) -> list[Completion]:
        if model is self.peft:
            self.peft.set_adapter(self.peft_names[model_id])
        return generate(model, self.tokenizer, prompts, params)

    async def _model(self, model_id: str):
        if model_id == self.name:
            return self.model
        if model_id not in self.adapters:
            raise ApiError(404, f"model {model_id!r} is not served here (see GET /v1/models)", param="model", code="model_not_found")
        await self.adapter(model_id)  # multiplexed: loads into the shared base on first use, LRU-evicted
        return self.peft

    @serve.multiplexed(max_num_models_per_replica=4)
    async def adapter(self, model_id: str) -> _Adapter:
        import peft

        spec = self.adapters[model_id]
        async with self.lock:
            if self.peft is None:
                base = kinds.auto_class(self.kind).from_pretrained(spec["base_path"]).eval()
                self.peft = peft.PeftModel.from_pretrained(base, spec["path"], adapter_name=self.peft_names[model_id]).eval()
            else:
                self.peft.load_adapter(spec["path"], adapter_name=self.peft_names[model_id])
        return _Adapter(self, self.peft_names[model_id])

    # --- request checks -------------------------------------------------------------------

    def _route(self, route: str) -> None:
        """A 404 naming the routes this model serves when `route` is not one of them."""
        if route not in kinds.ROUTES[self.kind]:
            raise ApiError(404, f"model {self.name!r} is a {self.kind} model: it serves POST "
                           f"{' and '.join(kinds.ROUTES[self.kind])}, not {route}", code="unsupported_route")

    def _params(self, body, max_tokens: int | None, logprobs: int | None = None, echo: bool = False) -> Params:
        if body.model != self.name and body.model not in self.adapters:
            raise ApiError(404, f"model {body.model!r} is not served here (see GET /v1/models)", param="model",
                           code="model_not_found")
        max_tokens = self.cfg.max_tokens if max_tokens is None else max_tokens  # 0 (with echo): score the prompt only
        if max_tokens > self.cfg.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's limit of {self.cfg.max_tokens_limit}",
                           param="max_tokens")
        if max_tokens > self.context:
            raise ApiError(400, f"max_tokens {max_tokens} exceeds the model's context of {self.context} tokens",
                           param="max_tokens", code="context_length_exceeded")
        # Below this, sampling is greedy decoding in all but name, and dividing the logits by a
        # near-zero temperature would overflow them to inf.
        temperature = body.temperature if body.temperature >= MIN_TEMPERATURE else 0.0
        return Params(max_tokens, temperature, body.top_p, tuple(body.stop or ()), body.seed, logprobs, echo)

    def _check_chars(self, chars: int, what: str, param: str | None = None) -> None:
        """400 for a text so long it cannot fit the context, before it is tokenized (tokenizing a
        megabyte would stall every request on this replica's event loop)."""
        if chars > self.max_chars:
            raise ApiError(400, f"{what} ({chars} characters) is longer than this server takes for the model's context "
                           f"of {self.context} tokens ({self.max_chars} characters)", param=param or what,
                           code="context_length_exceeded")

    def _check_prompt(self, prompt: str | list[int], params: Params) -> str | list[int]:
        """The prompt, once it fits the context with max_tokens; a token-id prompt's ids must be in the vocabulary."""
        if isinstance(prompt, list):
            bad = next((t for t in prompt if t >= self.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"prompt: token id {bad} is not in the model's vocabulary (ids 0 to "
                               f"{self.vocab_size - 1})", param="prompt")
            tokens = len(prompt)
        else:
            tokens = count_tokens(self.tokenizer, prompt)
        if tokens == 0 and self.kind != "seq2seq":  # nothing for a causal model to continue from
            raise ApiError(400, "prompt: the prompt is empty", param="prompt")
        if self.kind == "seq2seq":  # the encoder reads the prompt and eos, the decoder writes max_tokens: each within the context
            if max(tokens + 1, params.max_tokens) > self.context:
                raise ApiError(400, f"prompt ({tokens} tokens + eos) or max_tokens ({params.max_tokens}) exceeds the model's "
                               f"context of {self.context} tokens", param="prompt", code="context_length_exceeded")
            return prompt
        if tokens + params.max_tokens > self.context:
            raise ApiError(400, f"prompt ({tokens} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                           f"context of {self.context} tokens", param="prompt", code="context_length_exceeded")
        return prompt

    def _admit(self, generations: int) -> "Slot":
        """Room for `generations` more in flight, held until the Slot is released; 429 + Retry-After when
        full, 400 when a request alone asks for more than the replica ever takes."""
        limit = self.cfg.max_ongoing_requests
        if generations > limit:
            raise ApiError(400, f"this request asks for {generations} generations (prompts x n); this server takes at "
                           f"most {limit} at once", param="n")
        if self.in_flight + generations > limit:
            raise ApiError(429, "server busy, retry shortly", kind="rate_limit_error", headers={"Retry-After": "1"})
        self.in_flight += generations
        return Slot(self, generations)

    def _sse(self, model_id: str, prompt: str | list[int], params: Params, chat: bool, slot: "Slot") -> StreamingResponse:
        """Server-sent events for one generation; `slot` (already taken) is held until the stream ends.

        The stream generates in a thread of its own, beside the batches. It holds the model's lock
        only where it must: over an adapter (the shared PeftModel's active adapter must stay set)
        and with a seed (torch's global generator must not be reseeded by a batch meanwhile).
        """
        rid = api.new_id("chatcmpl" if chat else "cmpl")

        async def events(slot):
            try:
                model = await self._model(model_id)
                exclusive = model is self.peft or params.seed is not None
                async with self.lock if exclusive else contextlib.nullcontext():
                    if model is self.peft:
                        self.peft.set_adapter(self.peft_names[model_id])
                    if chat:
                        yield _event(api.chat_chunk(rid, model_id, 0, {"role": "assistant", "content": ""}, None))
                    pieces = stream(model, self.tokenizer, prompt, params)
                    while True:
                        piece = await asyncio.to_thread(next, pieces, None)
                        if piece is None:
                            break
                        text, finish = piece
                        chunk = (api.chat_chunk(rid, model_id, 0, {"content": text} if text else {}, finish) if chat
                                 else api.completion_chunk(rid, model_id, 0, text, finish))
                        yield _event(chunk)
                yield "data: [DONE]\n\n"
            except ApiError as e:  # the response has started: the error goes in the stream, as OpenAI's does
                yield _event(e.body)
            finally:
                slot.release()

        return StreamingResponse(events(slot), media_type="text/event-stream")
