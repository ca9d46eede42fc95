"""The applications against a deployed tiny model on the session's local Ray: the `/v1/rag` route over HTTP,
program-aided answers against direct ones, a ReAct transcript with real tools, and a LangChain chain.

The tiny model is first taught the three formats (direct answers, PAL programs, ReAct turns)
in-process on the bundled `add` family: an untrained model writes no programs, and a model that
can only copy numbers into a program (it cannot add) is exactly the case PAL is for.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from components.apps import pal
from components.apps.config import RagConfig, ReactConfig
from components.core.models import ModelConfig, build_causal_lm
from components.core.sft import encode_pair, pad_batch
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.deploy.config import DeployConfig
from tests.conftest import delete_serve_app

KEY = "apps-key-0123456789"
APP, RAG_APP = "test-apps", "test-apps-rag"


def tiny_model(pairs: list[tuple[str, str]]):
    """An untrained 2-layer GPT-2 (~0.14M parameters) and a BPE tokenizer trained on the pairs' text."""
    tok = train_bpe([p + c for p, c in pairs], TokenizerConfig(vocab_size=400))
    model = build_causal_lm(ModelConfig(n_layer=2, n_embd=64, n_head=4, n_positions=256), len(tok),
                            tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0)
    return model, tok


def teach(model, tok, pairs: list[tuple[str, str]], steps: int = 300, batch: int = 32, lr: float = 1e-2) -> float:
    """Train `model` on (prompt, completion) pairs, loss on completions; returns the last batch's loss.

    300 steps: on this mix the copying of numbers into programs appears between 200 and 300
    steps (measured: PAL exact match 0.0 after 200, 0.95-1.0 after 300).
    """
    encoded = [encode_pair(tok, p, c) for p, c in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng, threads = random.Random(0), torch.get_num_threads()
    torch.set_num_threads(2)  # measured on 2 busy cores: 58 ms a step with two threads, 90 ms with one
    try:
        model.train()
        for _ in range(steps):
            loss = model(**pad_batch(rng.sample(encoded, batch), tok.pad_token_id)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return loss.item()


@pytest.fixture(scope="module")
def served(ray_address, serve_port, tmp_path_factory):
    """The taught tiny model behind the OpenAI API, plus the RAG route; yields (api url, rag url, held-out add examples)."""
    from ray import serve

    from components.apps import rag
    from components.deploy.step import start

    examples = generate_tasks(324, seed=3, families=["add"])
    train, held_out = examples[:300], examples[300:]
    pairs = pal.teaching_pairs(train)
    model, tok = tiny_model(pairs)
    path = tmp_path_factory.mktemp("apps") / "tiny"
    tok.save_pretrained(path)
    model.config.save_pretrained(path)
    served_model = {"id": "tiny", "path": str(path), "metadata": {}}
    os.environ["LIFECYCLE_API_KEY"] = KEY  # both applications' replicas get it through their runtime_env
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        with ThreadPoolExecutor(1) as pool:
            # The route needs only the tokenizer and config: its replica starts (on the other core) while the model trains.
            rag_url = pool.submit(rag.start, RagConfig(app_name=RAG_APP, model_app=APP, max_tokens=16), served_model, serve_port)
            teach(model, tok, pairs)
            rag_url = rag_url.result()  # before the folder is written again (the route has read what it needs)
            early = post(rag_url, {"question": "What does pass do?"})  # the route is up, the model app not yet
            assert early.status_code == 503 and early.json()["error"]["type"] == "server_error", early.text
            model.save_pretrained(path)
            url = start(DeployConfig(port=serve_port, app_name=APP, max_tokens=16, cpus_per_replica=0.5), served_model, {})
    finally:
        del os.environ["LIFECYCLE_API_KEY"]
    yield url, rag_url, held_out
    serve.delete(RAG_APP, _blocking=False)  # both at once
    delete_serve_app(APP)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def post(url, body, key=KEY):
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


def test_rag_route_retrieves_generates_and_cites(served):
    from components.apps.rag import rag_prompt
    from components.core import retrieval
    from components.core.embedding import wordllama_embed

    url, rag_url, _ = served
    question = "How do chained comparisons like a < b < c work?"
    r = post(rag_url, {"question": question, "k": 3, "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    cfg = RagConfig()
    local = retrieval.search(retrieval.build_index(retrieval.collect_documents(cfg.collection), wordllama_embed), wordllama_embed,
                             question, 3)
    assert body["citations"] and body["citations"][0]["source"] == "comparisons.txt"
    # The route cites what it put in the prompt: the local ranking's first chunks, as many as fit the 256-token context.
    assert [(c["source"], c["position"]) for c in body["citations"]] == [(h.chunk.source, h.chunk.position)
                                                                         for h in local[:len(body["citations"])]]
    # Composition with the model deployment: the answer is the served model's greedy completion of that prompt.
    prompt = rag_prompt(question, [(c["source"], c["text"]) for c in body["citations"]])
    direct = client(url).completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    assert body["answer"] == direct.choices[0].text and body["usage"]["prompt_tokens"] == direct.usage.prompt_tokens
    assert body["usage"]["prompt_tokens"] + 12 <= 256

    hits = post(f"{rag_url}/search", {"question": question, "k": 3, "sources": ["for.txt", "while.txt"]}).json()["hits"]
    assert len(hits) == 3 and {h["source"] for h in hits} <= {"for.txt", "while.txt"}
    assert {s["source"] for s in httpx.get(f"{rag_url}/sources", headers={"Authorization": f"Bearer {KEY}"}).json()["sources"]} \
        == set(retrieval.collect_documents(cfg.collection))


def test_rag_bad_requests_get_4xx_json_errors(served):
    _, rag_url, _ = served
    assert post(rag_url, {"question": "for loops"}, key=None).status_code == 401
    assert post(rag_url, {"question": "for loops"}, key="wrong").json()["error"]["code"] == "invalid_api_key"
    cases = [
        ({"question": ""}, 422, "question"),
        ({"k": 3}, 422, "question"),
        ({"question": "for", "k": 0}, 422, "k"),
        ({"question": "for", "k": "many"}, 422, "k"),
        ({"question": "for", "colour": "red"}, 422, "colour"),
        ({"question": "for", "sources": ["../../etc/passwd"]}, 400, "sources"),
        ({"question": "for", "sources": ["/etc/passwd"]}, 400, "sources"),
        ({"question": "for", "sources": ["missing.txt"]}, 404, "sources"),
        ({"question": "for", "model": "../../etc/passwd"}, 404, "model"),
        ({"question": "for", "max_tokens": 250}, 400, "max_tokens"),  # no room left in the 256-token context
        ({"question": "for", "max_tokens": 300}, 400, "max_tokens"),  # above the route's limit
    ]
    for body, status, param in cases:
        r = post(rag_url, body)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.status_code, r.text)
    bad_json = httpx.post(rag_url, content=b"{not json", headers={"Authorization": f"Bearer {KEY}",
                                                                   "Content-Type": "application/json"})
    assert bad_json.status_code == 422 and "error" in bad_json.json()
    assert post(rag_url, {"question": "What does a bare raise re-raise?", "k": 1}).status_code == 200  # still serving


def test_program_aided_answers_beat_direct_answers_on_held_out_add_tasks(served):
    url, _, held_out = served
    score = pal.measure_pal_vs_direct(client(url), "tiny", held_out)
    print(f"\nadd, {score.n} held-out questions: direct exact match {score.direct_exact_match:.2f}, "
          f"PAL {score.pal_exact_match:.2f} ({score.programs_refused} programs refused, {score.programs_failed} failed)")
    # The model copies numbers into `answer = a + b` reliably, but cannot add (about 1/100 by chance).
    assert score.pal_exact_match >= 0.6 and score.pal_exact_match >= score.direct_exact_match + 0.4, score
    # A program the model was never taught is still judged by the sandbox, not trusted.
    assert pal.run_pal("```python\nimport os\nanswer = os.getcwd()\n```").refused


def test_react_loop_calls_the_tools_and_writes_a_transcript(served):
    from components.apps import react as react_app

    url, rag_url, held_out = served
    cfg = ReactConfig(model="tiny", max_steps=3)
    correct = 0
    for example in held_out[:4]:
        question = pal.instruction_of(example)
        transcript = react_app.run(client(url), rag_url, cfg, question, api_key=KEY)
        first = transcript.steps[0]
        assert first.thought and first.action == "calculate", transcript.to_dict()
        a, b = (int(x) for x in first.action_input.split("+"))
        assert first.observation == str(a + b)  # computed by the sandbox, not by the model
        assert transcript.stopped in ("answer", "step_limit", "context_full") and len(transcript.steps) <= cfg.max_steps
        correct += transcript.answer == example.response
        assert f"Observation: {first.observation}" in transcript.text()
    assert correct >= 2, correct
    limited = react_app.run(client(url), rag_url, cfg.model_copy(update={"max_steps": 1}), pal.instruction_of(held_out[0]),
                            api_key=KEY)
    assert limited.stopped == "step_limit" and limited.answer is None and len(limited.steps) == 1
    search = react_app.search_tool(rag_url, k=2, passage_chars=80, api_key=KEY)
    assert search("How do chained comparisons like a < b < c work?").startswith("(comparisons.txt)")


def test_langchain_chat_model_calls_the_endpoint_unchanged(served):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    url, _, held_out = served
    llm = ChatOpenAI(base_url=url, api_key=KEY, model="tiny", temperature=0, max_tokens=8, max_retries=0, timeout=60)
    chain = ChatPromptTemplate.from_messages([("user", "Write a Python program that sets answer: {question}")]) \
        | llm | StrOutputParser()
    question = pal.instruction_of(held_out[0])
    program = chain.invoke({"question": question})
    expected = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": pal.PAL_INSTRUCTION.format(question=question)}], max_tokens=8,
        temperature=0).choices[0].message.content
    assert program == expected and program.startswith("answer = ")
    batch = chain.batch([{"question": pal.instruction_of(e)} for e in held_out[1:3]])
    assert len(batch) == 2 and all(p.startswith("answer = ") for p in batch)
    with pytest.raises(openai.AuthenticationError):
        ChatOpenAI(base_url=url, api_key="wrong", model="tiny", max_retries=0).invoke("hi")
