"""A Ray Tune sweep over LoRA rank inside a workflow: ASHA, one MLflow child run per trial, resume
after a killed driver without re-running finished trials, and the best adapter feeding the next step."""

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import yaml

from components import tracking
from components.deploy.step import adapters_of
from tests.conftest import ROOT, delete_serve_app, execute_notebook, lifecycle, lifecycle_popen, notebook_images, notebook_text, wait_for, wait_for_idle_cluster

pytestmark = pytest.mark.full  # `./scripts/test.sh --full` (CI runs the main path only: scripts/test.sh)

RANKS = [2, 8]
MAX_STEPS = 40


def sweep_spec(tmp_path):
    spec = yaml.safe_load((ROOT / "workflows" / "smoke.yaml").read_text())
    steps = spec["steps"]
    for later in ("evaluate", "gate", "deploy"):  # this test is about the sweep and the step after it
        steps.pop(later)
    steps["pretrain"]["with"].update(max_steps=20, warmup_steps=2, eval_every=20, checkpoint_every=20)  # a base, not the subject
    steps["sweep"] = steps.pop("finetune")
    steps["sweep"]["with"] = {
        "max_steps": MAX_STEPS, "warmup_steps": 5, "log_every": 10, "eval_every": 10, "checkpoint_every": 20,
        "test_examples": 20, "eval_tokens": 1000, "lr": 3e-2,
        "sweep": {"ranks": RANKS, "grace_period": 2, "reduction_factor": 2},  # first rung: step 20
    }
    # The next step starts from the sweep's best model: a few IA3 steps on top of it, with
    # pretraining text replayed in each batch.
    steps["polish"] = {"uses": "finetune", "needs": ["sweep", "instructions", "corpus"],
                       "with": {"method": "ia3", "max_steps": 6, "warmup_steps": 1, "eval_every": 6, "test_examples": 20,
                                "eval_tokens": 1000, "replay_fraction": 0.25}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def runs(workdir, query):
    uri = tracking.tracking_uri_for(workdir)
    if not (workdir / "mlflow.db").exists():
        return []
    try:
        return tracking.client(uri).search_runs([tracking.experiment_id(uri)], query, order_by=["attributes.start_time ASC"])
    except Exception:  # the database is still being created
        return []


@pytest.fixture(scope="module")
def resumed_sweep(ray_address, tmp_path_factory):
    """The sweep spec run, its driver killed while the second trial trains, then run again to the end:
    (spec path, workdir, the first trial's run id, the re-run's output)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    spec, workdir, log = sweep_spec(tmp_path), tmp_path / "wd", tmp_path / "run.log"
    wait_for_idle_cluster()
    proc = lifecycle_popen("run", spec, "--workdir", str(workdir), "--address", ray_address, log=log)

    # Kill the driver once the first trial has finished and the second is training (before
    # its first rung at step 20, where ASHA may stop it).
    def second_trial_going():
        trials = runs(workdir, "tags.`lifecycle.kind` = 'trial'")
        client = tracking.client(tracking.tracking_uri_for(workdir))
        return len(trials) >= 2 and any(m.step >= 10 for m in client.get_metric_history(trials[1].info.run_id, "loss"))

    wait_for(lambda: proc.poll() is not None or second_trial_going(), 600, "a second sweep trial", log)
    assert proc.poll() is None, log.read_text()
    first_trial = runs(workdir, "tags.`lifecycle.kind` = 'trial'")[0].info.run_id
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for_idle_cluster()

    rerun = lifecycle("run", spec, "--workdir", str(workdir), "--address", ray_address, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return spec, workdir, first_trial, rerun


def test_sweep_resumes_after_a_killed_driver_and_its_best_adapter_flows_on(resumed_sweep, tmp_path):
    spec, workdir, first_trial, rerun = resumed_sweep
    assert "Sweep sweep (asha): best rank" in rerun.stdout  # the results table, printed at the end

    client = tracking.client(tracking.tracking_uri_for(workdir))
    (step,) = runs(workdir, "tags.`lifecycle.step` = 'sweep' and attributes.status = 'FINISHED'")
    trials = runs(workdir, f"tags.`mlflow.parentRunId` = '{step.info.run_id}'")
    assert sorted(int(t.data.params["r"]) for t in trials) == RANKS  # one child run per trial, re-parented
    for t in trials:
        assert {"trainable_params", "val_loss", "wall_s", "steps"} <= set(t.data.metrics), t.data.metrics
    # The finished trial was not trained again: each of its training steps was logged once (a
    # trial restarted after its final checkpoint only repeats its final report).
    steps_logged = Counter(m.step for m in client.get_metric_history(first_trial, "loss"))
    assert max(steps_logged) == MAX_STEPS and all(n == 1 for s, n in steps_logged.items() if s < MAX_STEPS), steps_logged
    by_rank = {int(t.data.params["r"]): t.data.metrics["trainable_params"] for t in trials}
    assert by_rank[2] < by_rank[8]

    summary = json.loads(open(client.download_artifacts(step.info.run_id, "sweep/results.json", str(tmp_path))).read())["summary"]
    assert summary["trial_steps"] <= summary["trial_steps_without_early_stopping"]
    artifacts = {a.path for a in client.list_artifacts(step.info.run_id, "sweep")}
    assert {"sweep/results.md", "sweep/val_loss_vs_rank.png"} <= artifacts

    # The best trial's adapter is the step's output, and the next step starts from it.
    best_r = int(step.data.metrics["best_r"])
    model_dir = json.loads(step.data.tags["lifecycle.artifact"])["uri"]
    assert json.loads(open(os.path.join(model_dir, "adapter", "adapter_config.json")).read())["r"] == best_r
    (polish,) = runs(workdir, "tags.`lifecycle.step` = 'polish'")
    assert step.info.run_id in polish.data.tags["lifecycle.inputs"]
    # polish's "before" is the sweep's "after": it scored the very model the sweep produced.
    assert polish.data.metrics["exact_match_before"] == step.data.metrics["exact_match_after"]
    assert step.data.metrics["exact_match_after"] >= step.data.metrics["exact_match_before"]
    versions = {v.name for v in client.search_model_versions()}
    assert {"smoke-sweep", "smoke-sweep-adapter"} <= versions
    # Every finished trial's adapter comes along, and the deploy step would serve each one.
    finished = sorted(int(t.data.params["r"]) for t in trials if t.data.tags["lifecycle.stopped_early"] == "False")
    served = adapters_of(str(model_dir), "m", {})
    assert sorted(json.loads(Path(a["path"], "adapter_config.json").read_text())["r"] for n, a in served.items()
                  if n != "m-adapter") == finished
    assert "m-adapter" in served and all(Path(a["base_path"]).parent == workdir / "artifacts" for a in served.values())


def test_the_sweep_notebook_plots_the_trials_and_serves_every_adapter_side_by_side(resumed_sweep, ray_address, serve_port):
    """notebooks/02_lora_rank_sweep.ipynb on this sweep: its run is all cache hits, then it promotes the
    best model and asks every finished trial's adapter the same held-out prompts through one endpoint."""
    spec, workdir, _, _ = resumed_sweep
    nb, seconds = execute_notebook("02_lora_rank_sweep.ipynb", SPEC=spec, WORKDIR=str(workdir), ADDRESS=ray_address,
                                   SERVE={"port": serve_port}, TEST_EXAMPLES=12)
    print(f"02_lora_rank_sweep (cached sweep): {seconds:.0f}s")
    uri = tracking.tracking_uri_for(workdir)
    latest = tracking.recent_workflows(uri, limit=1)[0]
    assert {s["state"] for s in latest["steps"]} == {"cached"}, latest["steps"]
    assert tracking.model_version_by_alias(uri, "smoke-sweep", "production")["version"] == "1"
    text = notebook_text(nb)
    # The merged best model, its adapter, and each trial that ran to the end (ASHA may stop one) answered.
    finished = [r for r in runs(workdir, "tags.`lifecycle.kind` = 'trial'") if r.data.tags["lifecycle.stopped_early"] == "False"]
    assert "smoke-sweep-adapter" in text and all(f"smoke-sweep-r{t.data.params['r']}-" in text for t in finished)
    assert notebook_images(nb) >= 2
    delete_serve_app("lifecycle")
