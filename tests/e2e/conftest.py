"""The tiny workflow's cold run, shared by the end-to-end checks and the notebooks that read it."""

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, lifecycle


@dataclass
class TinyRun:
    workdir: Path
    serving: tuple[str, ...]  # the arguments that deploy on the test cluster and return
    overrides: tuple[str, ...]  # what this run changed from the shipped spec
    stdout: str
    seconds: float


@pytest.fixture(scope="session")
def tiny_run(ray_address, serve_port, tmp_path_factory) -> TinyRun:
    """`lifecycle run workflows/tiny.yaml` once, cold, on the session's Ray (its endpoint left up)."""
    workdir = tmp_path_factory.mktemp("tiny")
    serving = (f"deploy.port={serve_port}", "--no-wait", "--workdir", str(workdir), "--address", ray_address)
    # Compression speed is printed, not asserted here (benchmarks/ measures it): fewer timed runs.
    overrides = tuple(f"{step}.measure.{k}" for step in ("quantize", "distill", "prune") for k in ("repeats=2", "speed_prompts=4"))
    started = time.time()
    out = lifecycle("run", str(ROOT / "workflows" / "tiny.yaml"), *overrides, *serving, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    return TinyRun(workdir, serving, overrides, out.stdout, time.time() - started)
