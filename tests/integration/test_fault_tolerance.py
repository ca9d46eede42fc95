"""Killed workers and killed drivers: the workflow still finishes, resuming from checkpoints."""

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import psutil

from components import tracking
from tests.conftest import lifecycle, lifecycle_popen, smoke_subset, wait_for, wait_for_idle_cluster

LONG = ["pretrain.max_steps=160", "pretrain.log_every=10", "pretrain.checkpoint_every=40", "pretrain.eval_every=80",
        "pretrain.eval_tokens=2000"]


def past_checkpoint(workdir: Path, step: int = 40) -> bool:
    """True once pretrain logged a step after its checkpoint at `step`: Ray Train has registered it."""
    if not (workdir / "mlflow.db").exists():
        return False
    try:
        client, runs = step_runs(workdir)
        return any(m.step > step for r in runs[-1:] for m in client.get_metric_history(r.info.run_id, "loss"))
    except Exception:  # the database is still being created
        return False


def start_long_run(spec: str, workdir: Path, ray_address: str, log: Path):
    """Start the smoke workflow (160 pretraining steps) and wait until it is past its first checkpoint."""
    wait_for_idle_cluster()  # a trainer of the previous test still holding CPUs would stall this one
    proc = lifecycle_popen("run", spec, *LONG, "--workdir", str(workdir), "--address", ray_address, log=log)
    wait_for(lambda: proc.poll() is not None or past_checkpoint(workdir), 420, "a first checkpoint", log)
    assert proc.poll() is None, log.read_text()
    return proc


def step_runs(workdir: Path):
    uri = tracking.tracking_uri_for(workdir)
    client = tracking.client(uri)
    runs = client.search_runs([tracking.experiment_id(uri)], "tags.`lifecycle.step` = 'pretrain'", order_by=["attributes.start_time ASC"])
    return client, runs


def train_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]


def resumed_past(workdir: Path, step: int):
    """The latest pretrain run's resumed_from_step once it has logged a loss beyond `step` after resuming."""
    try:
        client, runs = step_runs(workdir)
        run_id = runs[-1].info.run_id
        resumes = client.get_metric_history(run_id, "resumed_from_step")
        return resumes and any(m.step > step for m in client.get_metric_history(run_id, "loss")) and resumes[0].value
    except Exception:  # the database is busy
        return False


def test_killed_worker_then_killed_driver_resume_from_checkpoints(ray_address, tmp_path):
    """One long run takes both faults: a SIGKILLed worker (Ray Train restarts the group from the last
    checkpoint, within the same run), then a SIGKILLed driver (the re-run skips finished steps and
    resumes training from the last checkpoint)."""
    workdir, log = tmp_path / "wd", tmp_path / "run.log"
    spec = str(smoke_subset(tmp_path))
    proc = start_long_run(spec, workdir, ray_address, log)
    victim = wait_for(train_workers, 30, "a training worker")[0]
    victim.send_signal(signal.SIGKILL)
    # Restarted from a checkpoint inside the same run; let it pass the next checkpoint (80).
    first_resume = wait_for(lambda: resumed_past(workdir, 85), 300, "training to resume after the killed worker", log)
    assert first_resume >= 40 and first_resume % 40 == 0
    assert proc.poll() is None, "the run finished before its driver could be killed: " + log.read_text()[-2000:]

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The driver's tasks and actors die with it; wait until its trainer is gone.
    wait_for(lambda: not train_workers(), 120, "the old training workers to exit")

    rerun = lifecycle("run", spec, *LONG, "--workdir", str(workdir), "--address", ray_address, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "cached" in rerun.stdout

    client, runs = step_runs(workdir)
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    resumed = [m.step for m in client.get_metric_history(runs[1].info.run_id, "loss")]
    (resume,) = client.get_metric_history(runs[1].info.run_id, "resumed_from_step")
    assert resume.value >= 80 and resumed[0] > resume.value and resumed[-1] == 160  # not from scratch
    summary = json.loads(lifecycle("status", "--workdir", str(workdir), "--json").stdout)[0]["steps"]
    assert [s["state"] for s in summary] == ["cached", "cached", "done"]


def importing_the_loop(process: psutil.Process) -> bool:
    """Whether a training worker is loading the loop's module: tokenizers is mapped only once the loop's
    imports (transformers) run, which Ray Train does while it launches the loop on the worker."""
    try:
        return "tokenizers" in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:  # it exited
        return False


def test_worker_killed_while_its_group_starts_and_during_a_checkpoint(ray_address, tmp_path):
    """A worker may die at any moment (preemption, OOM). Here: once while Ray Train launches the loop on
    the group (Ray 2.60 does not retry that death itself: components/training.fit does), and once while
    the group writes a checkpoint. The step finishes in one MLflow run, resumed from the last whole
    checkpoint, within max_failures (3)."""
    workdir, log = tmp_path / "wd", tmp_path / "run.log"
    args = ["pretrain.max_steps=80", "pretrain.log_every=10", "pretrain.checkpoint_every=20", "pretrain.eval_every=80",
            "pretrain.eval_tokens=2000"]
    wait_for_idle_cluster()
    proc = lifecycle_popen("run", str(smoke_subset(tmp_path)), *args, "--workdir", str(workdir), "--address", ray_address, log=log)

    deadline = time.time() + 300  # polled fast: the loop's imports take a second or two
    while not (victims := [p for p in train_workers() if importing_the_loop(p)]):
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    victims[0].send_signal(signal.SIGKILL)
    wait_for(lambda: proc.poll() is not None or "a worker died while its group started" in log.read_text(), 60,
             "the step to restart its group", log)

    wait_for(lambda: proc.poll() is not None or past_checkpoint(workdir, 20), 300, "a first checkpoint", log)
    seen = set(Path(tempfile.gettempdir()).glob("train-ckpt-*"))  # each rank's folder of a checkpoint being saved
    deadline = time.time() + 120
    while not (saving := set(Path(tempfile.gettempdir()).glob("train-ckpt-*")) - seen):
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)
    train_workers()[0].send_signal(signal.SIGKILL)

    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    client, runs = step_runs(workdir)
    assert [r.info.status for r in runs] == ["FINISHED"], "one MLflow run for the step, whatever died"
    losses = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    (resume,) = client.get_metric_history(runs[0].info.run_id, "resumed_from_step")
    assert resume.value in (20, 40, 60), f"resumed from {resume.value}: not a whole checkpoint"
    assert losses[-1] == 80 and sorted(set(losses)) == list(range(10, 81, 10)), losses
    assert saving and runs[0].data.metrics["seconds_ray_train"] > 0
