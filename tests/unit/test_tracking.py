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


def _hold_lock(db, seconds: float):
    """A started thread holding `db`'s exclusive lock for `seconds` (returns once the lock is held)."""
    import sqlite3
    import threading
    import time

    held = threading.Event()

    def hold():
        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    return holder


def test_a_call_waits_out_a_lock_held_longer_than_sqlites_busy_timeout(tmp_path):
    """Another connection holds the file's write lock for 23 s, past the 20 s MLflow's SQLite store
    waits: without tracking's retry, creating the workflow run fails with "database is locked"."""
    import time

    from components import tracking

    uri = tracking.tracking_uri_for(tmp_path)
    tracking.experiment_id(uri, tmp_path)  # the tables exist
    holder = _hold_lock(tmp_path / "mlflow.db", 23)
    started = time.monotonic()
    run_id = tracking.start_workflow_run(uri, tmp_path, "locked", "sha", {}, None)
    waited = time.monotonic() - started
    holder.join()
    assert waited > 20 and tracking.client(uri).get_run(run_id).data.tags["lifecycle.workflow"] == "locked"


def test_other_errors_are_not_retried(tmp_path):
    import time

    import pytest

    from components import tracking

    uri = tracking.tracking_uri_for(tmp_path)
    started = time.monotonic()
    with pytest.raises(Exception, match="not found|No run"):
        tracking.client(uri).get_run("0" * 32)
    assert time.monotonic() - started < 10


def test_a_process_opens_the_store_while_another_holds_the_lock(tmp_path):
    """Opening MLflow's SQLite store reads the table list with the driver's default 5 s wait (before
    the store's own 20 s busy_timeout applies): a new process (a Ray Train controller logging its
    first report) failed there in CI while other processes held the file. Held here for 25 s."""

    from components import tracking

    uri = tracking.tracking_uri_for(tmp_path)
    tracking.experiment_id(uri, tmp_path)  # the tables exist
    holder = _hold_lock(tmp_path / "mlflow.db", 25)
    code = "import sys; from components import tracking; print(tracking.client(sys.argv[1]).search_experiments()[0].name)"
    out = subprocess.run([sys.executable, "-c", code, uri], cwd=ROOT, capture_output=True, text=True, timeout=300)
    holder.join()
    assert out.returncode == 0 and out.stdout.strip().endswith("lifecycle"), out.stderr[-1500:]
