"""A Ray Tune sweep over LoRA rank on an encoder classifier (ner, token head): trials ranked by accuracy on a slice of the
training data (never the test set), one MLflow child run each, the best one scored on the test set."""

import pytest
import yaml

from components import tracking
from tests.conftest import ROOT, lifecycle
from tests.e2e.test_shipped_specs import step_run

pytestmark = pytest.mark.full  # `./scripts/test.sh --full` (CI runs the main path only: scripts/test.sh)

RANKS = [16, 1]


def test_classify_sweeps_lora_rank_and_keeps_the_trial_best_on_validation(ray_address, tmp_path):
    spec = yaml.safe_load((ROOT / "workflows" / "encoder-tiny.yaml").read_text())
    steps = {k: spec["steps"][k] for k in ("corpus", "tokenizer", "pretrain")}
    steps["pretrain"]["with"].update(max_steps=40, warmup_steps=5, eval_every=40, checkpoint_every=40)  # a base, not the subject
    steps["ner"] = {"uses": "classify", "needs": ["pretrain"], "with": {
        "task": "ner", "method": "lora", "max_steps": 60, "warmup_steps": 6, "eval_every": 30, "log_every": 30, "lr": 1e-2,
        "sweep": {"ranks": RANKS, "scheduler": "fifo"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**spec, "steps": steps}))
    out = lifecycle("run", str(path), "--workdir", str(tmp_path / "wd"), "--address", ray_address, "--no-wait", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr

    step = step_run(tmp_path / "wd", "ner")
    m = step.data.metrics
    uri = tracking.tracking_uri_for(tmp_path / "wd")
    trials = tracking.client(uri).search_runs([tracking.experiment_id(uri)], "tags.`lifecycle.kind` = 'trial'")
    scores = {int(t.data.params["r"]): t.data.metrics["heldout_accuracy"] for t in trials}
    print(f"classify sweep: validation accuracy by rank {scores}, best rank {m['best_r']:.0f}, "
          f"test accuracy {m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%}")
    assert sorted(scores) == sorted(RANKS) and m["best_trials"] == len(RANKS)
    # The winner is the trial best on validation (a seeded tenth of the training sentences), never chosen on the test set.
    assert m["best_heldout_accuracy"] == max(scores.values()) and scores[int(m["best_r"])] == max(scores.values())
    assert m["accuracy_after"] > m["accuracy_before"] + 0.3  # the winner, scored once on the test sentences, learned the task
    assert 0 < m["trainable_params"] and "sweep/heldout_accuracy_vs_rank.png" in {
        a.path for a in tracking.client(uri).list_artifacts(step.info.run_id, "sweep")}
