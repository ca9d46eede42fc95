"""The shipped specs end to end through the `lifecycle` command, as a user runs them."""

import json
import time

import mlflow

from components import tracking
from tests.conftest import ROOT, lifecycle


def pretrain_metrics(workdir):
    uri = tracking.tracking_uri_for(workdir)
    (run,) = mlflow.MlflowClient(uri).search_runs([tracking.experiment_id(uri)], "tags.`lifecycle.step` = 'pretrain'")
    return run.data.metrics


def test_smoke_spec(ray_address, tmp_path):
    out = lifecycle("run", str(ROOT / "workflows" / "smoke.yaml"), "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "workflow run" in out.stdout and "ppl" in out.stdout
    assert pretrain_metrics(tmp_path)["ppl_final"] < pretrain_metrics(tmp_path)["ppl_initial"] / 4


def test_tiny_spec_cuts_perplexity_tenfold_then_reruns_fully_cached(ray_address, tmp_path):
    spec = str(ROOT / "workflows" / "tiny.yaml")
    started = time.time()
    out = lifecycle("run", spec, "--workdir", str(tmp_path), "--address", ray_address, timeout=1200)
    cold = time.time() - started
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = pretrain_metrics(tmp_path)
    # The acceptance criterion: held-out perplexity at most a tenth of the untrained model's.
    assert metrics["ppl_final"] <= metrics["ppl_initial"] / 10, metrics
    print(f"tiny cold: {cold:.0f}s, ppl {metrics['ppl_initial']:.0f} -> {metrics['ppl_final']:.1f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s")

    started = time.time()
    again = lifecycle("run", spec, "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    print(f"tiny cached re-run: {time.time() - started:.1f}s")
    assert again.returncode == 0
    runs = json.loads(lifecycle("status", "--workdir", str(tmp_path), "--json").stdout)
    assert [s["state"] for s in runs[0]["steps"]] == ["cached"] * 3
