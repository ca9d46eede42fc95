"""Ray wiring shared by the training phases: a TorchTrainer over the step's workers (and a local copy
of the checkpoint its loop exported at the end), or, for the RL phases whose roles are actors, one
placement group that reserves all of them."""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
from ray._raylet import PlacementGroupID
from ray.exceptions import RayActorError
from ray.train.torch import TorchTrainer
from ray.util.placement_group import PlacementGroup, remove_placement_group

from components.artifact import StepContext
from components.report import ReportToLineage


def trainer(loop: Callable[[dict], None], loop_config: dict, ctx: StepContext, name: str, max_failures: int,
            callbacks: list) -> TorchTrainer:
    """One distributed run of `loop` on ctx.workers workers. `name` should depend only on the step's
    cache key, so that a re-run after a crash resumes from the latest checkpoint."""
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers,
            use_gpu=ctx.gpus_per_worker > 0,
            resources_per_worker={"CPU": ctx.cpus_per_worker, **({"GPU": ctx.gpus_per_worker} if ctx.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(ctx.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def fit(loop: Callable[[dict], None], loop_config: dict, ctx: StepContext, max_failures: int, shown: tuple[str, ...],
        part: str = "", run_id: str | None = None) -> Path:
    """Run `loop` to the end, every report logged to MLflow (`run_id`, default the step's run) and
    shown in the progress table; returns a local copy of the final checkpoint (the loop's export:
    model/, adapter/, progress.json; without state/, which only a resumed run reads).
    The run is named by the step's cache key, so a re-run after a killed driver resumes from the
    latest checkpoint; `part` names a second training run of the same step (its own checkpoints)."""
    name = f"{ctx.step}-{ctx.cache_key[:16]}" + (f"-{part}" if part else "")
    callbacks = [ReportToLineage(ctx.tracking_uri, run_id or ctx.run_id, ctx.progress, shown)]
    with ctx.timed("ray_train"):  # worker start, the loop, stop: the loop's own time is in its reports
        restarts = 0
        while True:
            try:
                result = _fit_once(trainer(loop, loop_config, ctx, name, max_failures - restarts, callbacks))
                break
            except ray.train.ControllerError as error:
                # Ray 2.60 restarts a group whose worker dies while the group initialises or trains,
                # but not one whose worker dies while the group launches the loop (WorkerGroup's
                # ray.get of run_train_fn sits outside the try that makes a death retryable): that
                # one comes back as a ControllerError, its group leaked. Freed, the same name resumes
                # from the latest checkpoint, in the same MLflow run, counted against max_failures.
                dead = error.controller_failure
                if not isinstance(dead, RayActorError) or restarts >= max_failures or not _free_placement_group_of(dead):
                    raise
                restarts += 1
                ctx.progress({"restart": f"{restarts} of {max_failures}: a worker died while its group started"})
    local = Path(tempfile.mkdtemp(prefix=f"{ctx.phase}-export-"))
    with ctx.timed("export"), result.checkpoint.as_directory() as directory:
        top = Path(directory)
        shutil.copytree(top, local, dirs_exist_ok=True, ignore=lambda d, names: ["state"] if Path(d) == top else [])
    return local


def _fit_once(run: TorchTrainer) -> ray.train.Result:
    """run.fit(), then the SIGINT handler it installed (on the main thread) put back: that handler
    holds the run's controller actor, which would otherwise outlive the run, with its resources."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main else None
    try:
        return run.fit()
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)


def _free_placement_group_of(dead: RayActorError) -> bool:
    """Remove the placement group the dead worker ran in: its controller never took charge of the
    group it was starting, so nothing else would, and the group holds its CPUs until Ray stops.
    Asks Ray's State API (the dashboard) which group that was; False when it cannot tell."""
    from ray.util.state import get_actor  # deferred: only a failed start needs the State API

    try:
        actor = get_actor(dead.actor_id)
    except Exception:  # no dashboard on this cluster: the caller raises the worker's death as it came
        return False
    if actor is None or not actor.placement_group_id:
        return False
    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(actor.placement_group_id))))
    return True


def reserve_actors(bundle: dict[str, float], count: int, phase: str, ctx: StepContext):
    """A placement group of `count` bundles of `bundle` (e.g. {"CPU": 0.5}), packed on one node when
    they fit, for a phase's role actors; waits (showing how long) while other steps hold the resources,
    as Ray Train does. Refused at once when the whole cluster could never hold them."""
    from ray.util.placement_group import placement_group  # deferred: only the actor phases place groups

    total = ray.cluster_resources()
    if any(count * amount > total.get(kind, 0) for kind, amount in bundle.items()):
        raise RuntimeError(f"{phase} needs {count} actors of {bundle}; the whole cluster has {total} (lower the CPUs or GPUs per actor)")
    pg = placement_group([bundle] * count, strategy="PACK", name=f"{phase.lower()}-{ctx.cache_key[:12]}")
    waited = 0
    with ctx.timed("waiting_for_resources"):
        while not pg.wait(timeout_seconds=30):
            waited += 30
            ctx.progress({"waiting for resources": f"{waited}s"})
    return pg
