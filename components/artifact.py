"""The step contract: what a workflow step receives and returns.

    def run(cfg: PhaseConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact

A step never reaches into another step's internals: it reads the directories its
upstream Artifacts name and writes its own output into ``ctx.output_dir``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.storage import localize


@dataclass(frozen=True)
class Artifact:
    """One step's output.

    uri: the directory (a path, or an object-store URI) holding its files.
    kind: what the directory holds, one of the kinds the phases produce (workflows/phases.py):
        dataset       train.jsonl, validation.jsonl ({"text"} lines), dataset.json (source, sizes, digests)
        tokenizer     a Hugging Face tokenizer (tokenizer.json and its config)
        model         a Hugging Face model (config.json, model.safetensors, tokenizer files); a fine-tuned
                      one's adapter in adapter/ and a sweep's trial adapters in trials/<trial>/adapter;
                      a quantized one's integer weights with compression.json
        instructions  train.jsonl, validation.jsonl, test.jsonl (Alpaca lines plus "family")
        preferences   train.jsonl, test.jsonl (prompt, chosen, rejected lines plus "family" and "kind")
        reward_model  a Hugging Face sequence-classification model with one output, the scalar reward
        evaluation    scores.json (every score), predictions.jsonl (the instruction answers, when scored)
        approval      decision.json (passed, failures, the model's URI and registered version, the rules)
        endpoint      endpoint.json (URL, served model name, registry alias, RAG route when there is one)
    run_id: the MLflow run of the step that made it.
    cache_key: hash of phase, config, upstream keys and code version.
    metrics: a few headline numbers (and digests) for summaries and downstream steps.
    headline: one line on what the step made, for the progress table and the run's summary.
    cached: True when this execution reused it instead of computing it.
    """

    uri: str
    kind: str
    run_id: str
    cache_key: str
    metrics: dict[str, float | str] = field(default_factory=dict)
    headline: str = ""
    cached: bool = False

    @property
    def path(self) -> Path:
        """A local directory with the artifact's files (downloaded once per node from an object store)."""
        return localize(self.uri)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Artifact:
        return Artifact(**json.loads(text))


@dataclass
class StepContext:
    """What the engine hands a step besides its config and inputs.

    output_dir: an empty scratch directory; the engine renames it into place when
        the step returns, so a crashed step never leaves a half-written artifact.
    tracking_uri / run_id: the step's own MLflow run (already started).
    workers / cpus_per_worker / gpus_per_worker: the Ray resources the step may use.
    storage_path: where Ray Train keeps checkpoints for this step (resume survives a
        killed driver because the path depends only on the cache key): a path, or an
        object-store URI (s3://, gs://) when the run's storage is one (see components.storage).
    progress: call with a dict of metrics to update the live progress table.
    seconds: wall seconds per part of the step (`timed`), which the engine logs as the step
        run's `seconds_<part>` metrics beside `seconds_step`, its whole time (benchmarks/step_profile.py).
    """

    step: str
    phase: str
    workdir: Path
    output_dir: Path
    storage_path: str
    tracking_uri: str
    run_id: str
    cache_key: str
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    progress: Callable[[dict[str, Any]], None] = lambda metrics: None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the wall seconds of the block to `seconds[part]` (e.g. "score_before", "ray_train")."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start
