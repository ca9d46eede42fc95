"""components.tracking on a real SQLite MLflow store (no Ray)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """MLflow creates a new SQLite database's tables from whichever process opens it first; without
    tracking's lock, four processes at once collide ("table ... already exists") and most fail."""
    code = ("import sys; from pathlib import Path; from components import tracking; "
            "w = Path(sys.argv[1]); print(tracking.experiment_id(tracking.tracking_uri_for(w), w))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    # Correctness, not speed: beside the Ray tests on 2 busy cores, four imports of mlflow and one schema
    # migration after another (the lock) took over 120 s once (CI, 2026-12-07).
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, found by all
