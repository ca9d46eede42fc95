"""The engine on a real local Ray and a real MLflow (SQLite): lineage, caching, registry."""

import json
import time

import mlflow
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import tracking
from tests.conftest import lifecycle, smoke_subset
from workflows import engine
from workflows.spec import load_spec

QUICK = ["pretrain.max_steps=40", "pretrain.warmup_steps=4", "pretrain.log_every=10", "pretrain.eval_every=20",
         "pretrain.checkpoint_every=20", "pretrain.eval_tokens=2000"]


def test_workflow_lineage_registry_and_cache(ray_address, tmp_path):
    workdir = tmp_path / "wd"
    resolved = load_spec(smoke_subset(tmp_path), QUICK)
    parent, outcomes = engine.run(resolved, workdir, ray_address)
    assert [o.state for o in outcomes] == ["done", "done", "done"], [o.error for o in outcomes]
    corpus, tok, pre = (o.artifact for o in outcomes)

    # The model learned something and is a loadable Hugging Face directory with safetensors.
    assert pre.metrics["ppl_final"] < pre.metrics["ppl_initial"]
    assert (pre.path / "model.safetensors").exists() and not list(pre.path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(pre.path, use_safetensors=True)
    ids = AutoTokenizer.from_pretrained(pre.path)("def f(x):", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[-1] == len(AutoTokenizer.from_pretrained(tok.path))

    # Lineage in MLflow: nested runs with tags, datasets with digests, the model registered.
    client = mlflow.MlflowClient(tracking.tracking_uri_for(workdir))
    run = client.get_run(pre.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["lifecycle.phase"] == "pretrain"
    assert run.data.tags["lifecycle.cache_key"] == pre.cache_key
    assert set(run.data.tags["lifecycle.inputs"].split(",")) == {corpus.run_id, tok.run_id}
    assert run.data.tags["lifecycle.spec_sha"] == resolved.sha
    assert {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs} == {
        ("corpus/train", corpus.metrics["digest_train"]), ("corpus/validation", corpus.metrics["digest_validation"])}
    assert [m.step for m in client.get_metric_history(pre.run_id, "loss")] == [10, 20, 30, 40]
    assert "loss_curve.png" in [f.path for f in client.list_artifacts(pre.run_id)]
    version = client.get_model_version("smoke-pretrain", "1")
    assert version.run_id == pre.run_id and version.source == pre.path.as_uri()

    out = lifecycle("lineage", "models:/smoke-pretrain/1", "--workdir", str(workdir), "--json")
    assert out.returncode == 0, out.stderr
    chain = json.loads(out.stdout)
    assert [n["step"] for n in chain] == ["pretrain", "corpus", "tokenizer"]
    assert chain[1]["datasets"][0]["source"] == "python-docs"

    # A second run with the same spec reuses everything, from the same runs.
    started = time.time()
    _, again = engine.run(resolved, workdir, ray_address)
    assert [o.state for o in again] == ["cached"] * 3
    assert [o.artifact.run_id for o in again] == [corpus.run_id, tok.run_id, pre.run_id]
    print(f"cached re-run: {time.time() - started:.1f}s")

    # A changed config re-runs only what depends on it.
    changed = load_spec(smoke_subset(tmp_path), QUICK + ["pretrain.lr=2e-3"])
    _, third = engine.run(changed, workdir, ray_address)
    assert [o.state for o in third] == ["cached", "cached", "done"]
    assert client.get_model_version("smoke-pretrain", "2").run_id == third[2].artifact.run_id

    status = lifecycle("status", "--workdir", str(workdir), "--json")
    runs = json.loads(status.stdout)
    assert [s["state"] for s in runs[1]["steps"]] == ["cached"] * 3
    assert runs[0]["steps"][2]["run_id"] == third[2].artifact.run_id


def test_failing_step_marks_run_failed_and_leaves_no_partial_artifact(ray_address, tmp_path):
    workdir = tmp_path / "wd"
    # 1 validation document of a few characters cannot fill a 64-token block per worker.
    data = tmp_path / "tiny.txt"
    data.write_text("\n\n".join(f"Document number {i} is short." for i in range(3)))
    resolved = load_spec(smoke_subset(tmp_path), QUICK + [f"corpus.source={data}", "corpus.validation_fraction=0.3"])
    _, outcomes = engine.run(resolved, workdir, ray_address)
    assert [o.state for o in outcomes] == ["done", "done", "failed"]
    assert "too little text" in outcomes[2].error
    assert not [p for p in (workdir / "artifacts" / ".partial").iterdir()]
    runs = mlflow.MlflowClient(tracking.tracking_uri_for(workdir)).search_runs(
        [tracking.experiment_id(tracking.tracking_uri_for(workdir))], "tags.`lifecycle.step` = 'pretrain'")
    assert [r.info.status for r in runs] == ["FAILED"]
