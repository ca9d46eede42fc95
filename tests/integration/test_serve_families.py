"""A seq2seq model and two classifiers on a real Ray Serve, over HTTP: T5 on the OpenAI completion routes
(the official `openai` client), BERT sequence and token classifiers on POST /v1/classify."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from components.deploy import classify, kinds
from components.deploy.config import DeployConfig
from components.deploy.generation import Params, generate
from tests.conftest import delete_serve_app
from tests.unit.test_deploy_families import ANSWERS, NER, SENTIMENT, tiny_models

APP = "test-serve-families"


@pytest.fixture(scope="module")
def deploy(ray_address, serve_port, tmp_path_factory):
    """deploy(kind) -> (API url, local model, tokenizer): serves that tiny model as `tiny-<kind>`, replacing the last one
    (one application at the route prefix /, as the deploy step makes)."""
    from components.deploy.step import start

    saved = tiny_models(tmp_path_factory.mktemp("families"))
    cfg = DeployConfig(port=serve_port, app_name=APP, cpus_per_replica=0.5, max_tokens=8)

    def serve(kind):
        path = saved[kind]
        url = start(cfg, {"id": f"tiny-{kind}", "path": str(path), "metadata": {"registered_model": kind}}, {})
        return url, kinds.auto_class(kind).from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)

    yield serve
    delete_serve_app(APP)


def client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def test_t5_answers_on_the_completion_routes_without_a_prompt_echo(deploy):
    url, t5, tok = deploy("seq2seq")
    c = client(url)
    (listed,) = c.models.list().data
    assert listed.id == "tiny-seq2seq" and listed.model_extra["kind"] == "seq2seq"

    out = c.completions.create(model="tiny-seq2seq", prompt=list(ANSWERS), max_tokens=8, temperature=0)
    # The taught answers, not the prompt followed by them: nothing to strip from an encoder-decoder's output.
    assert [choice.text for choice in out.choices] == list(ANSWERS.values())
    assert out.usage.prompt_tokens == sum(len(tok(p, add_special_tokens=False)["input_ids"]) + 1 for p in ANSWERS)  # + eos
    streamed = "".join(chunk.choices[0].text for chunk in c.completions.create(
        model="tiny-seq2seq", prompt="Sort the words: dog cat", max_tokens=8, temperature=0, stream=True))
    assert streamed == "cat dog"

    messages = [{"role": "user", "content": "Add 2 and 3."}]
    chat = c.chat.completions.create(model="tiny-seq2seq", messages=messages, max_tokens=8, temperature=0)
    templated = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat.choices[0].message.content == generate(t5, tok, [templated], Params(max_tokens=8, temperature=0))[0].text

    wrong = httpx.post(f"{url}/classify", json={"input": "Add 2 and 3."})
    assert wrong.status_code == 404 and "/v1/completions" in wrong.json()["error"]["message"]


def test_sequence_classifier_labels_texts_and_pairs_on_v1_classify(deploy):
    url, model, tok = deploy("sequence-classification")
    (listed,) = client(url).models.list().data
    assert listed.model_extra["kind"] == "sequence-classification" and listed.model_extra["labels"] == list(SENTIMENT.values())

    inputs = ["the cat sat on the mat", {"text": "John lives in Paris", "text_pair": "a man lives in France"}, "Add 2 and 3."]
    response = httpx.post(f"{url}/classify", json={"model": "tiny-sequence-classification", "input": inputs}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "tiny-sequence-classification"
    items = [(i, None) if isinstance(i, str) else (i["text"], i["text_pair"]) for i in inputs]
    local = classify.classify(model, tok, items, list(SENTIMENT.values()))
    for i, (row, expected) in enumerate(zip(body["data"], local)):
        assert row["index"] == i and set(row["scores"]) == set(SENTIMENT.values())
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == max(row["scores"], key=row["scores"].get) and row["score"] == max(row["scores"].values())
        assert row["scores"] == pytest.approx(expected, abs=1e-4)  # the served model is the model

    def ask(i):  # concurrent requests merge into batches and each gets its own answer
        return httpx.post(f"{url}/classify", json={"input": inputs[i % 3]}, timeout=60).json()["data"][0]["scores"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    assert all(a == pytest.approx(local[i % 3], abs=1e-4) for i, a in enumerate(answers))

    for bad in ({"model": "tiny-sequence-classification"}, {"input": 3}, {"input": []}, {"input": {"text": "premise only"}}):
        r = httpx.post(f"{url}/classify", json=bad)
        assert r.status_code == 422 and r.json()["error"]["param"] == "input", (bad, r.text)
    assert httpx.post(f"{url}/classify", json={"model": "other", "input": "x"}).status_code == 404
    assert httpx.post(f"{url}/classify", json={"input": "word " * 200}).status_code == 400  # past the context
    with pytest.raises(openai.NotFoundError, match="/v1/classify"):
        client(url).completions.create(model="tiny-sequence-classification", prompt="hi", max_tokens=4)


def test_token_classifier_labels_words_with_offsets_on_v1_classify(deploy):
    url, model, tok = deploy("token-classification")
    text = "John Smith lives in Paris, France."
    words = httpx.post(f"{url}/classify", json={"input": [text, "the cat"]}, timeout=60)
    assert words.status_code == 200, words.text
    first, second = words.json()["data"]
    assert first["index"] == 0 and second["index"] == 1
    local = classify.entities(text, classify.tag(model, tok, [text], kinds.labels(model))[0])
    assert [(e["word"], e["entity"]) for e in first["entities"]] == [(w.word, w.entity) for w in local]
    assert 0 < len(first["entities"]) < 8  # of its 8 words, those labelled O are left out
    for e in first["entities"]:
        assert text[e["start"]:e["end"]] == e["word"] and e["entity"] in set(NER.values()) - {"O"} and 0 < e["score"] <= 1
    grouped = httpx.post(f"{url}/classify", json={"input": text, "aggregation": "entity"}).json()["data"][0]["entities"]
    assert grouped and all(e["entity"] in ("PER", "LOC") and text[e["start"]:e["end"]] == e["word"] for e in grouped)
    merged = classify.entities(text, classify.tag(model, tok, [text], kinds.labels(model))[0], "entity")
    assert [(e.word, e.entity) for e in merged] == [(e["word"], e["entity"]) for e in grouped]
    pair = httpx.post(f"{url}/classify", json={"input": {"text": "a", "text_pair": "b"}})
    assert pair.status_code == 400 and "pairs" in pair.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="tiny-token-classification", messages=[{"role": "user", "content": "hi"}])
