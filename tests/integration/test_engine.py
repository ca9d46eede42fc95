"""The engine on a real local Ray and a real MLflow (SQLite): a failing step.

Lineage, caching and the registry are checked on the shipped tiny spec (tests/e2e), whose run
this suite pays for anyway."""

import mlflow

from components import tracking
from tests.conftest import smoke_subset
from workflows import engine
from workflows.spec import load_spec

QUICK = ["pretrain.max_steps=40", "pretrain.warmup_steps=4", "pretrain.log_every=10", "pretrain.eval_every=20",
         "pretrain.checkpoint_every=20", "pretrain.eval_tokens=2000"]


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
