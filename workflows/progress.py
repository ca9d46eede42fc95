"""What the person at the terminal sees: a live step table, then a summary table."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

STATE_STYLE = {"waiting": "dim", "running": "yellow", "done": "green", "cached": "cyan", "failed": "bold red"}


def _metric(row: dict[str, Any]) -> str:
    """The row's headline or latest metrics, as Rich markup: a headline or error is shown as written, brackets and all."""
    if row.get("headline"):
        return escape(str(row["headline"]))
    m = row.get("metrics") or {}
    parts = [f"trial {m['trial']}"] if "trial" in m else []  # a sweep shows which trial is training
    if "step" in m:
        parts.append(f"step {int(m['step'])}")
    if "scored" in m:  # evaluation: work items answered so far
        parts.append(f"{int(m['scored'])}/{int(m['items'])} items")
    if "loss" in m:
        parts.append(f"loss {m['loss']:.3f}")
    if "val_loss" in m:
        parts.append(f"val {m['val_loss']:.3f}")
    if "tokens_per_s" in m:
        parts.append(f"{m['tokens_per_s']:.0f} tok/s")
    if not parts:  # a phase with its own progress keys (PPO: iteration, reward, kl): shown as reported
        parts = [f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in m.items()]
    return escape(", ".join(parts))


def live_table(rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="lifecycle", expand=False)
    for col in ("step", "phase", "state", "elapsed", "metric"):
        table.add_column(col)
    now = time.time()
    for name, row in rows.items():
        state = row.get("state", "waiting")
        elapsed = (row.get("ended") or now) - row["started"] if "started" in row else 0.0
        table.add_row(name, row.get("phase", ""), f"[{STATE_STYLE.get(state, '')}]{state}", f"{elapsed:.0f}s" if elapsed else "", _metric(row))
    return table


class Display:
    """Live table on a terminal; one line per state change elsewhere (CI logs, pipes).

    While the live table is shown, whatever else would write to the terminal goes to `log`
    (stray_output_to), so that the table is never torn by Ray's notices or a library's warnings."""

    def __init__(self, console: Console | None = None, log: Path | None = None):
        self.console = console or Console(emoji=False)
        live = self.console.is_terminal
        # Live's own redirection would print the stray lines above the table; they go to `log` instead.
        self.live = Live(console=self.console, refresh_per_second=4, transient=True,
                         redirect_stdout=not log, redirect_stderr=not log) if live else None
        self.log = log if live else None
        self.stray = contextlib.ExitStack()
        self.seen: dict[str, str] = {}

    def __enter__(self):
        if self.live:
            if self.log:
                self.stray.enter_context(stray_output_to(self.log, self.console))
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)
            self.stray.close()

    def update(self, rows: dict[str, dict[str, Any]]) -> None:
        if self.live:
            self.live.update(live_table(rows))
            return
        for name, row in rows.items():
            state = row.get("state", "waiting")
            if self.seen.get(name) != state and state != "waiting":
                self.seen[name] = state
                self.console.print(f"[{time.strftime('%H:%M:%S')}] {name}: {state} {_metric(row)}", highlight=False)
            elif state == "running" and row.get("metrics") and self.seen.get(name + "/m") != str(row["metrics"]):
                self.seen[name + "/m"] = str(row["metrics"])
                self.console.print(f"[{time.strftime('%H:%M:%S')}] {name}: {_metric(row)}", highlight=False)


@contextlib.contextmanager
def stray_output_to(path: Path, console: Console) -> Iterator[TextIO]:
    """Send what else writes to the terminal to `path` (appended) until exit: print() and sys.stderr
    (Ray's driver prints the raylet's notices, e.g. "(raylet) A worker died ...", to sys.stdout from a
    thread) and every logging handler that writes to the terminal. `console` keeps the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout, sys.stderr
    console.file = console.file  # pinned: a Console without a file writes to whatever sys.stdout is now
    with open(path, "a", buffering=1) as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} lifecycle run\n")
        start = log.tell()
        # Handlers writing to the terminal now, and their streams (a FileHandler is a StreamHandler subclass: left alone).
        before = {h: h.setStream(log) for h in _stream_handlers() if type(h) is logging.StreamHandler and h.stream in terminal}
        sys.stdout = sys.stderr = log
        try:
            yield log
        finally:
            sys.stdout, sys.stderr = terminal
            # Those get their stream back; handlers made meanwhile (Ray's, at ray.init) took the log: the terminal.
            for handler in _stream_handlers():
                if handler.stream is log:
                    handler.setStream(before.get(handler, terminal[1]))
            wrote = log.tell() > start
    if wrote:
        console.print(f"[dim]messages from Ray and libraries during the run: {path}[/dim]", highlight=False, soft_wrap=True)


def _stream_handlers() -> list[logging.StreamHandler]:
    """Every StreamHandler of the root logger and of every named logger."""
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler)]


def summary_table(outcomes, workflow_run_id: str) -> Table:
    table = Table(title=f"workflow run {workflow_run_id}")
    for col in ("step", "phase", "state", "time", "MLflow run", "headline"):
        table.add_column(col)
    for o in outcomes:
        run_id = o.artifact.run_id if o.artifact else ""
        headline = escape(o.artifact.headline if o.artifact else (o.error or ""))  # an error may quote "[/path ...]"
        table.add_row(o.step, o.phase, f"[{STATE_STYLE.get(o.state, '')}]{o.state}", f"{o.seconds:.1f}s", run_id, headline)
    return table
