"""Retrieval-augmented generation as a Ray Serve route beside the OpenAI endpoint.

    POST {route}          {question, model?, k?, sources?, max_tokens?, temperature?}
                          -> {answer, citations: [{id, source, position, score, text, truncated}], cited, usage}
    POST {route}/search   {question, k?, sources?} -> {hits: [{source, position, score, text}]}   (retrieval only)
    GET  {route}/health   liveness; {route}/sources: the indexed documents

Composition: the route is its own Serve application (`RagConfig.app_name`, at `route_prefix`)
whose replica holds the index and calls the model deployment of the endpoint
(`OpenAIServer` in `RagConfig.model_app`) through a deployment handle, so RAG prompts join
the same dynamic batches as the API's requests and no second copy of the model is loaded.
Serve routes by the longest prefix, so `/v1/rag` reaches this app and `/v1/...` the model.

The index is built when the replica starts: the collection's files (never anything outside
it), cut into chunks, embedded with WordLlama, in FAISS. The prompt numbers the retrieved
chunks ([1], [2], ...) in the bundled instruction format and keeps as many as the model's
context allows; the response lists those chunks as citations, and `cited` the numbers the
answer itself mentions.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime.
import os
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from ray import serve
from transformers import AutoConfig, AutoTokenizer

from components.apps.config import RagConfig, RagRequest
from components.core import retrieval
from components.core.embedding import wordllama_embed
from components.core.models import context_length
from components.data.instructions import format_prompt
from components.deploy.app import ApiError, add_error_handlers, authorize, node_api_key, private_key_file
from components.deploy.generation import Params
from components.deploy.ingress import local_url, wait_ready
from components.storage import localize

INSTRUCTION = "Answer the question using the numbered passages. Cite passages like [1]."
_CITATION = re.compile(r"\[(\d+)\]")



class _BarePrefix:
    """ASGI middleware: `POST /v1/rag` reaches the app's "/" route instead of a 307 redirect to `/v1/rag/`.

    Serve passes the route prefix as the ASGI root_path, so the bare prefix is an empty path
    inside the app, which FastAPI cannot declare; clients (and the OpenAI-style URL) use no
    trailing slash.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("root_path") and scope["path"].rstrip("/") == scope["root_path"].rstrip("/"):
            scope = {**scope, "path": scope["root_path"].rstrip("/") + "/", "raw_path": (scope["root_path"].rstrip("/") + "/").encode()}
        await self.app(scope, receive, send)


rag_app = add_error_handlers(FastAPI(title="llm-lifecycle RAG", docs_url=None, redoc_url=None, openapi_url=None))
rag_app.add_middleware(_BarePrefix)


def rag_prompt(question: str, passages: list[tuple[str, str]]) -> str:
    """The bundled instruction format with numbered passages: passages are (source, text), numbered from 1."""
    numbered = "\n\n".join(f"[{i}] ({source}) {text}" for i, (source, text) in enumerate(passages, 1))
    return format_prompt(f"{INSTRUCTION}\n\n{numbered}\n\nQuestion: {question}")


def _hit(hit: retrieval.Hit) -> dict:
    return {"source": hit.chunk.source, "position": hit.chunk.position, "score": round(hit.score, 4), "text": hit.chunk.text}


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(rag_app)
class RagServer:
    def __init__(self, settings: dict, model: dict, adapters: list[str], key_file: str | None = None):
        self.cfg = RagConfig.model_validate(settings)
        started = time.time()
        self.index = retrieval.build_index(retrieval.collect_documents(self.cfg.collection, self.cfg.patterns),
                                           wordllama_embed, self.cfg.index, self.cfg.chunk_chars, self.cfg.chunk_overlap)
        self.index_seconds = time.time() - started
        path = localize(model["path"])
        self.model_id = model["id"]
        self.served = {self.model_id, *adapters}  # checked here: the model replica's own 404 does not cross the handle
        self.tokenizer = AutoTokenizer.from_pretrained(path)  # to fit the passages into the model's context
        self.context = context_length(AutoConfig.from_pretrained(path))
        self.handle = None  # the model deployment's, looked up at the first answer: the model app may start later
        self.api_key = node_api_key(key_file)

    @rag_app.get("/health")
    def health(self):
        return {"status": "ok", "chunks": len(self.index.chunks), "index": self.index.kind,
                "index_seconds": round(self.index_seconds, 3)}

    @rag_app.get("/sources")
    def sources(self, request: Request):
        authorize(request, self.api_key)
        return {"sources": [{"source": s, "chunks": len(rows)} for s, rows in self.index.sources.items()]}

    @rag_app.post("/search")
    def search(self, body: RagRequest, request: Request):
        authorize(request, self.api_key)
        return {"hits": [_hit(h) for h in self._retrieve(body)]}

    @rag_app.post("/")
    async def answer(self, body: RagRequest, request: Request):
        authorize(request, self.api_key)
        if body.model is not None and body.model not in self.served:
            raise ApiError(404, f"model {body.model!r} is not served here (see GET /v1/models)", param="model",
                           code="model_not_found")
        hits = self._retrieve(body)
        max_tokens = body.max_tokens or self.cfg.max_tokens
        if max_tokens > self.cfg.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is above this route's limit of {self.cfg.max_tokens_limit}",
                           param="max_tokens")
        prompt, used = self._fit(body.question, hits, max_tokens)
        params = Params(max_tokens=max_tokens, temperature=body.temperature)
        model = self._model()  # outside the try: its 503 is meant for the client
        try:
            done = await model.batched_generate.remote(body.model or self.model_id, prompt, params)
        except Exception as e:  # the model replica failed or went away: the client gets a JSON 502, the route lives on
            raise ApiError(502, f"the model deployment failed: {type(e).__name__}", kind="server_error") from None
        citations = [{"id": i, **_hit(h), "text": text, "truncated": text != h.chunk.text}
                     for i, (h, text) in enumerate(used, 1)]
        cited = sorted({int(n) for n in _CITATION.findall(done.text) if 1 <= int(n) <= len(used)})
        return {"object": "rag.answer", "model": body.model or self.model_id, "question": body.question,
                "answer": done.text, "finish_reason": done.finish_reason, "citations": citations, "cited": cited,
                "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                          "total_tokens": done.prompt_tokens + done.completion_tokens}}

    # --- helpers ------------------------------------------------------------------------------

    def _retrieve(self, body: RagRequest) -> list[retrieval.Hit]:
        if body.sources is not None:
            for source in body.sources:
                try:  # a name that would leave the collection is refused before it is looked up
                    retrieval.inside(self.cfg.collection, source)
                except retrieval.UnsafePath as e:
                    raise ApiError(400, str(e), param="sources") from None
                if source not in self.index.sources:
                    raise ApiError(404, f"{source!r} is not in the collection (see GET {self.cfg.route_prefix}/sources)",
                                   param="sources", code="source_not_found")
        return retrieval.search(self.index, wordllama_embed, body.question, body.k or self.cfg.top_k, body.sources)

    def _model(self):
        if self.handle is None:
            try:
                self.handle = serve.get_deployment_handle("OpenAIServer", app_name=self.cfg.model_app)
            except KeyError:
                raise ApiError(503, f"the model application {self.cfg.model_app!r} is not running", kind="server_error",
                               headers={"Retry-After": "5"}) from None
        return self.handle

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _fit(self, question: str, hits: list[retrieval.Hit], max_tokens: int) -> tuple[str, list]:
        """The prompt with as many passages (best first) as fit; the last one may be cut. Returns (prompt, [(hit, text)])."""
        budget = self.context - max_tokens - len(self._tokens(rag_prompt(question, [])))
        if self.cfg.context_tokens is not None:
            budget = min(budget, self.cfg.context_tokens)
        if budget <= 0:
            raise ApiError(400, f"the question and max_tokens ({max_tokens}) leave no room for passages in the model's "
                           f"context of {self.context} tokens", param="max_tokens", code="context_length_exceeded")
        used: list[tuple[retrieval.Hit, str]] = []
        for hit in hits:
            text = hit.chunk.text
            prompt = rag_prompt(question, [(h.chunk.source, t) for h, t in used] + [(hit.chunk.source, text)])
            over = len(self._tokens(prompt)) - (self.context - max_tokens)
            if over > 0:
                ids = self._tokens(text)
                keep = len(ids) - over - 2  # a margin: tokens can merge differently at the cut
                if keep < 8:
                    break
                text = self.tokenizer.decode(ids[:keep])
                used.append((hit, text))
                break
            used.append((hit, text))
        prompt = rag_prompt(question, [(h.chunk.source, t) for h, t in used])
        if len(self._tokens(prompt)) + max_tokens > self.context:
            raise ApiError(400, f"the question leaves no room for max_tokens ({max_tokens}) in the model's context "
                           f"of {self.context} tokens", param="max_tokens", code="context_length_exceeded")
        return prompt, used


def build(cfg: RagConfig, model: dict[str, Any], adapters: list[str] = ()) -> serve.Application:
    """The RAG Serve application over the served `model` ({id, path}; the same dict given to the deploy step);
    `adapters`: the ids of its LoRA adapters, which requests may name as `model` too."""
    # The key reaches the replica as a private file, as the model app's does: in the runtime_env it
    # would be shown on the Ray dashboard.
    key = os.environ.get("LIFECYCLE_API_KEY") or None
    return RagServer.options(ray_actor_options={"num_cpus": cfg.cpus}).bind(
        cfg.model_dump(), model, list(adapters), private_key_file(key) if key else None)


def start(cfg: RagConfig, model: dict[str, Any], port: int, host: str = "127.0.0.1", timeout_s: float = 180,
          adapters: list[str] = ()) -> str:
    """Deploy the route on Serve (HTTP on `port`) and return its URL once it answers.

    The model application may come up before or after: the route looks its deployment up at
    the first answer (503 until then), so both can be started at once.
    """
    serve.start(http_options={"host": host, "port": port})  # a no-op when Serve runs already
    serve.run(build(cfg, model, adapters), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    url = local_url(host, port) + cfg.route_prefix
    wait_ready(f"{url}/health", lambda body: body.get("status") == "ok", timeout_s, f"the RAG route at {url}")
    return url
