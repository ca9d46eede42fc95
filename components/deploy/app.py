"""The Ray Serve application: a FastAPI ingress speaking the OpenAI HTTP API over one model.

    GET  /v1/models            the served model and its LoRA adapters, with registry metadata
    POST /v1/completions       prompt(s) -> text; `stream: true` sends server-sent events
    POST /v1/chat/completions  messages -> the model's chat template -> text
    POST /v1/classify          texts (or text pairs) -> labels, or words -> entities (classifiers)
    GET  /health, /ready       liveness; readiness (model loaded)

Requests merge into dynamic batches (`serve.batch`): one `generate` call per sampling setting
in a batch. Adapters are multiplexed (`serve.multiplexed`) over one copy of their base model,
chosen by the request's `model`. Overload is answered with 429 + Retry-After by the replica
(more than `max_ongoing_requests` in flight) or 503 by Serve (its queue is full), never a hang.
Only the models named at deploy time can be served: a request names an id, never a path.
The model's kind (components/deploy/kinds.py) sets its routes: a causal or seq2seq (T5) model
answers the two completion routes, a classifier /v1/classify; another route is a 404 that says
which routes the model serves.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.
import asyncio
import hmac
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from components.core.models import context_length
from components.deploy import api, classify, kinds
from components.deploy.config import DeployConfig
from components.deploy.generation import Completion, Params, batch_wait_s, count_tokens, generate, stream
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
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error",
                       code="invalid_api_key")


def build(cfg: DeployConfig, model: dict[str, Any], adapters: dict[str, dict[str, Any]]) -> serve.Application:
    """The Serve application for `model` ({id, path, metadata}) and `adapters` ({id: {path, base_path, metadata}})."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica,
                              "runtime_env": {"env_vars": {k: v for k, v in os.environ.items() if k == "LIFECYCLE_API_KEY"}}},
        "max_ongoing_requests": cfg.max_ongoing_requests + 1,  # one above ours: the replica, not Serve, says 429 first
        "max_queued_requests": cfg.max_queued_requests,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return OpenAIServer.options(**options).bind(cfg.model_dump(), model, adapters)


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(done: list[Completion], n: int) -> api.Usage:
    # Each prompt is counted once however many completions (n) it has, as OpenAI does.
    prompt = sum(c.prompt_tokens for c in done[::n])
    completion = sum(c.completion_tokens for c in done)
    return api.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


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
        self.model = kinds.auto_class(self.kind).from_pretrained(path).eval()  # safetensors only
        self.labels = kinds.labels(self.model) if self.kind in kinds.CLASSIFIERS else None
        if self.cfg.gpus_per_replica > 0 and torch.cuda.is_available():
            self.model.to("cuda")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.context = context_length(self.model)
        self.adapters = adapters
        # PEFT keeps each adapter as a submodule named after it, and a module name cannot hold a "."
        # (a sweep trial's id has its learning rate in it: r8-alpha16-lr0.01).
        self.peft_names = {model_id: f"adapter_{i}" for i, model_id in enumerate(adapters)}
        self.peft = None  # one base model under every adapter, loaded with the first adapter request
        self.lock = asyncio.Lock()  # the model is used by one generate call at a time
        self.in_flight = 0
        self.api_key = os.environ.get("LIFECYCLE_API_KEY") or None
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
    def models(self, request: Request):
        self._authorize(request)
        entries = [(self.name, self.metadata)] + [(k, v.get("metadata", {})) for k, v in self.adapters.items()]
        extra = {"kind": self.kind, "routes": list(kinds.ROUTES[self.kind]), **({"labels": self.labels} if self.labels else {})}
        return {"object": "list", "data": [{"id": k, "object": "model", "created": 0, "owned_by": "llm-lifecycle",
                                            "metadata": meta, **extra} for k, meta in entries]}

    @app.post("/v1/completions")
    async def completions(self, body: api.CompletionRequest, request: Request):
        self._authorize(request)
        self._route("/v1/completions")
        params = self._params(body, body.max_tokens)
        prompts = [self._check_prompt(p, params) for p in body.prompt]
        if body.stream:
            if len(prompts) > 1 or body.n > 1:
                raise ApiError(400, "stream supports one prompt and n=1", param="stream")
            return self._sse(body.model, prompts[0], params, chat=False)
        with self._slot():
            self._set_batch_wait()
            done = await asyncio.gather(*(self.batched_generate(body.model, p, params) for p in prompts for _ in range(body.n)))
        return api.completion_body(body.model, [(c.text, c.finish_reason) for c in done], _usage(done, body.n))

    @app.post("/v1/chat/completions")
    async def chat(self, body: api.ChatCompletionRequest, request: Request):
        self._authorize(request)
        self._route("/v1/chat/completions")
        if body.messages[-1].role == "assistant":
            raise ApiError(400, "the last message must not be the assistant's", param="messages")
        prompt = self.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False,
                                                    add_generation_prompt=True)
        params = self._params(body, body.max_completion_tokens or body.max_tokens)
        prompt = self._check_prompt(prompt, params)
        if body.stream:
            if body.n > 1:
                raise ApiError(400, "stream supports n=1", param="stream")
            return self._sse(body.model, prompt, params, chat=True)
        with self._slot():
            self._set_batch_wait()
            done = await asyncio.gather(*(self.batched_generate(body.model, prompt, params) for _ in range(body.n)))
        return api.chat_body(body.model, [(c.text, c.finish_reason) for c in done], _usage(done, body.n))

    @app.post("/v1/classify")
    async def classify_texts(self, body: api.ClassifyRequest, request: Request):
        self._authorize(request)
        self._route("/v1/classify")
        model_id = body.model or self.name
        if model_id != self.name:
            raise ApiError(404, f"model {model_id!r} is not served here (see GET /v1/models)", param="model",
                           code="model_not_found")
        items = body.items()
        if self.kind == "token-classification" and any(pair is not None for _, pair in items):
            raise ApiError(400, "a token classifier labels the words of one text: send texts, not text pairs", param="input")
        for i, item in enumerate(items):
            tokens = classify.input_tokens(self.tokenizer, item)
            if tokens > self.context:
                raise ApiError(400, f"input {i} ({tokens} tokens) exceeds the model's context of {self.context} tokens",
                               param="input", code="context_length_exceeded")
        with self._slot():
            self._set_batch_wait(self.batched_classify)
            done = await asyncio.gather(*(self.batched_classify(item) for item in items))
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
        async with self.lock:
            # On the event loop, as generation is (see batched_generate).
            if self.kind == "sequence-classification":
                out = classify.classify(self.model, self.tokenizer, items, self.labels)
            else:
                out = classify.tag(self.model, self.tokenizer, [text for text, _ in items], self.labels)
        self.last_batch = (len(items), time.monotonic())
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # size set from the config in __init__, wait per request
    async def batched_generate(self, models: list[str], prompts: list[str], params: list[Params]) -> list[Completion]:
        """A dynamic batch: one generate call per (model, sampling setting); seeded requests alone."""
        groups: dict[tuple, list[int]] = {}
        for i, (m, p) in enumerate(zip(models, params)):
            groups.setdefault((m, p, i if p.seed is not None else None), []).append(i)
        results: list[Completion | None] = [None] * len(prompts)
        self.batch_size.observe(len(prompts))
        for (model_id, p, _), rows in groups.items():
            model = await self._model(model_id)
            async with self.lock:
                # On the event loop, not in a thread: a generating thread would hold the GIL so
                # much that new requests stop reaching this batch queue (see docs/architecture.md).
                out = self._run(model, model_id, [prompts[i] for i in rows], p)
            for i, c in zip(rows, out):
                results[i] = c
            self.generated_tokens.inc(sum(c.completion_tokens for c in out), tags={"model": model_id})
        self.last_batch = (len(prompts), time.monotonic())
        return results

    def _set_batch_wait(self, batched=None) -> None:
        """Before a request joins the batch queue: wait for a fuller batch only under concurrent load."""
        size, ended = self.last_batch
        (batched or self.batched_generate).set_batch_wait_timeout_s(
            batch_wait_s(size, time.monotonic() - ended, self.cfg.batch_wait_timeout_s))

    def _run(self, model, model_id: str, prompts: list[str], params: Params) -> list[Completion]:
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

    def _authorize(self, request: Request) -> None:
        authorize(request, self.api_key)

    def _route(self, route: str) -> None:
        """A 404 naming the routes this model serves when `route` is not one of them."""
        if route not in kinds.ROUTES[self.kind]:
            raise ApiError(404, f"model {self.name!r} is a {self.kind} model: it serves POST "
                           f"{' and '.join(kinds.ROUTES[self.kind])}, not {route}", code="unsupported_route")

    def _params(self, body, max_tokens: int | None) -> Params:
        if body.model != self.name and body.model not in self.adapters:
            raise ApiError(404, f"model {body.model!r} is not served here (see GET /v1/models)", param="model",
                           code="model_not_found")
        max_tokens = max_tokens or self.cfg.max_tokens
        if max_tokens > self.cfg.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's limit of {self.cfg.max_tokens_limit}",
                           param="max_tokens")
        return Params(max_tokens, body.temperature, body.top_p, tuple(body.stop or ()), body.seed)

    def _check_prompt(self, prompt: str, params: Params) -> str:
        tokens = count_tokens(self.tokenizer, prompt)
        if self.kind == "seq2seq":  # the encoder reads the prompt and eos, the decoder writes max_tokens: each within the context
            if max(tokens + 1, params.max_tokens) > self.context:
                raise ApiError(400, f"prompt ({tokens} tokens + eos) or max_tokens ({params.max_tokens}) exceeds the model's "
                               f"context of {self.context} tokens", param="prompt", code="context_length_exceeded")
            return prompt
        if tokens + params.max_tokens > self.context:
            raise ApiError(400, f"prompt ({tokens} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                           f"context of {self.context} tokens", param="prompt", code="context_length_exceeded")
        return prompt

    def _slot(self):
        server = self

        class Slot:  # counts requests in flight; past the limit, 429 with Retry-After
            def __enter__(self):
                if server.in_flight >= server.cfg.max_ongoing_requests:
                    raise ApiError(429, "server busy, retry shortly", kind="rate_limit_error", headers={"Retry-After": "1"})
                server.in_flight += 1

            def __exit__(self, *exc):
                server.in_flight -= 1

        return Slot()

    def _sse(self, model_id: str, prompt: str, params: Params, chat: bool) -> StreamingResponse:
        with self._slot():  # 429 now, before the stream starts; the stream counts itself while it runs
            pass
        rid = api.new_id("chatcmpl" if chat else "cmpl")

        async def events():
            self.in_flight += 1
            try:
                model = await self._model(model_id)
                async with self.lock:
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
            finally:
                self.in_flight -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

