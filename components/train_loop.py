"""The per-worker training kit: what every Ray Train loop (pretrain, finetune, classify, reward / DPO,
the compressed student) is built from, so that each loop.py reads as its training step alone.

Every loop has the same skeleton around its step: resume from Ray Train's checkpoint (and say the
final numbers again when the run had already finished), sum values over the steps since the last
report, report on a log / eval / checkpoint cadence with the means over workers, save the resumable
state with a checkpoint, and at the end gather the weights and export a Hugging Face model. `Run`
holds that skeleton; `batch_rows` picks a worker's batch so that a resumed run sees the same batches;
`export_model` writes the final model. Starting a run (TorchTrainer, callbacks) is components/training.py.

A checkpoint holds `state/` (the strategy's resumable model and optimizer state) and `progress.json`
(`step`, the loop's own keys, `final_metrics` once finished); the final one also `model/` (and for a
PEFT model `adapter/`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from components.core.sft import pad_batch

Pair = tuple[list[int], list[int]]  # (input_ids, labels): -100 on the prompt (causal), or the response alone (seq2seq)


def worker() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker."""
    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


class Run:
    """One worker's way through a training run: the step, where it resumed, the values summed since the
    last report, and the cadence of reports (cfg.log_every), evaluations (cfg.eval_every) and
    checkpoints (cfg.checkpoint_every) up to cfg.max_steps.

    rate: the throughput metric's name (e.g. "tokens_per_s"); items_per_step: what it counts per
    optimizer step over all workers. progress: what is saved in progress.json; a loop may add its own keys.
    """

    def __init__(self, cfg, par, rank: int, rate: str, items_per_step: float):
        self.cfg, self.par, self.rank = cfg, par, rank
        self.rate, self.items_per_step = rate, items_per_step
        self.progress: dict = {"step": 0}
        self.resumed_from: int | None = None
        self._reset_window()

    def resume(self) -> bool:
        """Load the last checkpoint's state and progress if Ray Train restarted us. True when that run
        had already finished: its final metrics are reported again and the loop has nothing left to do."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return False
        with checkpoint.as_directory() as directory:
            self.par.load(Path(directory) / "state")
            self.progress = json.loads((Path(directory) / "progress.json").read_text())
        self.resumed_from = self.progress["step"]
        if self.progress["step"] < self.cfg.max_steps:
            return False
        ray.train.report(self.progress["final_metrics"], checkpoint=checkpoint if self.rank == 0 else None)
        return True

    def steps(self) -> range:
        """The step indices still to run: from the resumed step to max_steps."""
        return range(self.progress["step"], self.cfg.max_steps)

    @property
    def done(self) -> int:
        """Optimizer steps finished."""
        return self.progress["step"]

    @property
    def last(self) -> bool:
        return self.done == self.cfg.max_steps

    def add(self, **values: float) -> None:
        """Sum values (e.g. loss=...) into the window; each is reported as its mean per step over the window and workers."""
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0.0) + value

    def record(self, grad_norm: float, **values: float) -> None:
        """Close an optimizer step: its gradient norm (reported as is) and values to average (see `add`)."""
        self.add(**values)
        self.grad_norm = grad_norm
        self.window_steps += 1
        self.progress["step"] += 1

    def report_due(self) -> bool:
        return report_due(self.done, self.cfg.max_steps, self.cfg.log_every, self.cfg.eval_every, self.cfg.checkpoint_every)

    def eval_due(self) -> bool:
        return self.done % self.cfg.eval_every == 0 or self.last

    def metrics(self, **extra) -> dict:
        """The window's report (collective: every rank calls it): step, the window's values averaged over
        its steps and the workers, lr, grad_norm, the rate (items per second), `extra`; and, once after
        a restart, resumed_from_step."""
        elapsed = time.perf_counter() - self.window_start
        metrics = {
            "step": self.done,
            **{key: mean_over_workers(total / self.window_steps) for key, total in self.window.items()},
            "lr": self.par.lr(),
            "grad_norm": self.grad_norm,
            self.rate: self.items_per_step * self.window_steps / elapsed,
            **extra,
        }
        if self.resumed_from is not None:  # the first report after a restart says where it resumed
            metrics["resumed_from_step"], self.resumed_from = self.resumed_from, None
        return metrics

    def report(self, metrics: dict, export: Path | None = None) -> None:
        """Report the metrics: at the last step as the final metrics with a checkpoint in `export` (the
        folder export_model wrote, None on the ranks that write none); at a checkpoint step with a
        checkpoint; otherwise alone. Starts the next window."""
        if self.last:
            self.progress["final_metrics"] = metrics
            save_and_report(metrics, self.par, self.progress, self.rank, self.cfg.strategy, export)
        elif self.done % self.cfg.checkpoint_every == 0:
            save_and_report(metrics, self.par, self.progress, self.rank, self.cfg.strategy)
        else:
            ray.train.report(metrics)
        self._reset_window()

    def _reset_window(self) -> None:
        self.window: dict[str, float] = {}
        self.window_steps, self.grad_norm, self.window_start = 0, 0.0, time.perf_counter()


def report_due(done: int, max_steps: int, log_every: int, eval_every: int, checkpoint_every: int) -> bool:
    """Whether step `done` (1-based) reports: a log, eval or checkpoint step, or the last."""
    return done == max_steps or not (done % log_every and done % eval_every and done % checkpoint_every)


def batch_rows(n: int, index: int, size: int, rank: int, world: int, seed: int, wrap: bool = True) -> np.ndarray:
    """Row indices (int64) of this worker's batch `index` out of n rows: a rank stride of a per-epoch
    seeded permutation, so a batch depends only on (n, index, size, rank, world, seed) and a resumed
    run sees the same batches as an uninterrupted one.

    When a rank's share (n // world rows) is shorter than size: wrap repeats its rows to fill the
    batch (size rows); wrap False returns the short batch (pretraining's blocks).
    """
    if size == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    per_rank = max(1, n // world)
    per_epoch = max(1, per_rank // size)
    epoch, position = divmod(index, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n)[rank::world][:per_rank]
    start = (position * size) % len(order)
    if not wrap:
        return order[start : start + size]
    return np.resize(np.roll(order, -start), size)


def mean_over_workers(value: float) -> float:
    """The mean of `value` over all workers (collective: every rank calls it)."""
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)  # gloo reduces CPU tensors on every backend Ray Train sets up here
    return float(tensor.item()) / dist.get_world_size()


@torch.no_grad()
def validation_loss(model, pairs: list[Pair], size: int, rank: int, world: int, device, pad_id: int) -> float:
    """Mean labelled-token loss over this worker's share of the validation pairs (batches of `size`),
    averaged over workers (collective)."""
    mine = pairs[rank::world][: len(pairs) // world]
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(mine), size):
        chunk = mine[start : start + size]
        batch = {k: v.to(device) for k, v in pad_batch(chunk, pad_id).items()}
        total += model(**batch).loss.item() * len(chunk)
        count += len(chunk)
    model.train()
    return mean_over_workers(total / max(count, 1))


def export_model(par, rank: int, build: Callable[[], tuple], prefix: str, adapter: bool = True) -> Path | None:
    """Gather the trained weights (collective: every rank calls it); rank 0 loads them into `build()`'s
    fresh (model, tokenizer) and writes a folder with `model/` (Hugging Face weights and the
    tokenizer), returned; other ranks get None.

    A PEFT model is written as plain weights: LoRA / IA3 merged into the base (`merge_and_unload`);
    prompt tuning cannot be folded, so its `model/` is the unchanged base. With `adapter` its
    adapter is also written to `adapter/` (adapter_model.safetensors + adapter_config.json).
    """
    from peft import PeftModel

    weights = par.full_state_dict()
    if rank != 0:
        return None
    model, tokenizer = build()
    model.load_state_dict(weights, strict=False)  # a tied lm_head may be absent; it follows the embedding
    model.tie_weights()
    export = Path(tempfile.mkdtemp(prefix=f"{prefix}-export-"))
    if isinstance(model, PeftModel):
        if adapter:
            model.save_pretrained(export / "adapter")
        model = model.get_base_model() if model.active_peft_config.is_prompt_learning else model.merge_and_unload()
    model.save_pretrained(export / "model")  # safetensors
    tokenizer.save_pretrained(export / "model")
    return export


def save_and_report(metrics: dict, par, progress: dict, rank: int, strategy: str, export: Path | None = None) -> None:
    """Save the resumable state (every rank for DeepSpeed, rank 0 otherwise) into `export` (or a fresh
    folder), progress.json on rank 0, and report the metrics with that folder as the checkpoint."""
    directory = export or Path(tempfile.mkdtemp(prefix="train-ckpt-"))
    par.save(directory / "state")
    if rank == 0:
        (directory / "progress.json").write_text(json.dumps(progress))
    writes = rank == 0 or strategy == "deepspeed"
    checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if writes else None
    ray.train.report(metrics, checkpoint=checkpoint)  # returns once the files are in storage
    shutil.rmtree(directory, ignore_errors=True)
