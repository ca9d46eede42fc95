"""Benchmark results: what each script writes, and docs/benchmarks.md regenerated from them.

    .venv/bin/python benchmarks/report.py [--results benchmarks/results] [--doc docs/benchmarks.md]
    .venv/bin/python benchmarks/report.py capture NAME -- COMMAND ...   # a script that only prints its table

Every benchmark leaves two files in benchmarks/results/: NAME.json (the numbers) and NAME.md (its
Markdown table, with the exact command and the machine line above it). This script copies each
NAME.md between the markers `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in docs/benchmarks.md
and leaves everything outside the markers (the hand-written explanations) as it is; a result with
no markers in the document yet gets a new section at the end.

`capture NAME -- COMMAND` runs a script that prints its table to stdout (serve_bench.py,
compress_bench.py) and writes results/NAME.md from it: the command, the machine line, and the
Markdown table cut out of the output (log lines dropped). Exits with the command's status.

The helpers below are what the benchmark scripts import (this folder is on sys.path when a script
in it runs): `machine()` for the machine line, `write_result()` for the two files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
MARK = re.compile(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->", re.S)


def machine() -> dict:
    """Cores, memory, CPU model, torch and Ray versions, date: the line every result carries."""
    info = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        info["cpu"] = platform.processor()
    for name in ("torch", "ray", "mlflow", "deepspeed"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # not installed, or fails to import: leave it out
            pass
    return info


def machine_line(info: dict | None = None) -> str:
    info = info or machine()
    parts = [info["date"], f"{info['cores']} cores", f"{info.get('memory_gib', '?')} GiB"]
    parts += [f"{k} {info[k]}" for k in ("torch", "ray", "mlflow") if k in info]
    return "; ".join(parts)


def command_line() -> str:
    """The command that produced this result, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def write_result(name: str, data: dict, table: str, notes: str = "", results: Path = RESULTS) -> Path:
    """Print the table and notes; write benchmarks/results/NAME.json (data plus the machine) and NAME.md
    (command, machine, table, notes)."""
    print(table.strip() + (f"\n\n{notes.strip()}" if notes.strip() else ""))
    results.mkdir(parents=True, exist_ok=True)
    info = machine()
    (results / f"{name}.json").write_text(json.dumps({"command": command_line(), "machine": info, **data}, indent=1, default=str))
    text = f"`{command_line()}` ({machine_line(info)})\n\n{table.strip()}\n"
    if notes.strip():
        text += f"\n{notes.strip()}\n"
    (results / f"{name}.md").write_text(text)
    return results / f"{name}.md"


def clean_up(ray_tmpdir: str, workdir: Path, keep: bool) -> None:
    """Remove a benchmark's private Ray temp folder, and its working folder unless asked to keep it."""
    shutil.rmtree(ray_tmpdir, ignore_errors=True)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; align: one of l/r per column (default: all left)."""
    sep = [("---:" if a == "r" else "---") for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def clean(text: str) -> str:
    """A result file's Markdown: as written by write_result, or only the table of a script's raw stdout."""
    if text.startswith("`"):  # written by write_result: command line first
        return text.strip()
    lines = text.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        return text.strip()
    return "\n".join(lines[rows[0] : rows[-1] + 1])


def refresh(doc: str, results: dict[str, str], stamp: str) -> str:
    """doc with each result between its markers; results without markers appended as new sections."""
    seen = set()

    def replace(m: re.Match) -> str:
        name = m.group(1)
        if name not in results:
            return m.group(0)
        seen.add(name)
        return f"<!-- bench:{name} -->\n{results[name]}\n<!-- /bench:{name} -->"

    doc = MARK.sub(replace, doc)
    for name in sorted(set(results) - seen):
        doc = doc.rstrip("\n") + f"\n\n## {name} ({stamp})\n\n<!-- bench:{name} -->\n{results[name]}\n<!-- /bench:{name} -->\n"
    return doc


def capture(name: str, command: list[str], results: Path = RESULTS) -> int:
    """Run `command` (stdout shown as it comes), then write results/NAME.md from its Markdown table."""
    import subprocess

    if command[:1] == ["--"]:
        command = command[1:]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = []
    for line in proc.stdout:
        sys.stdout.write(line)
        out.append(line)
    if proc.wait() != 0:
        return proc.returncode
    lines = "".join(out).splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        print(f"{name}: no Markdown table in the output", file=sys.stderr)
        return 1
    # The table, and the caption line just above it if the script prints one (compress_bench.py does).
    start = rows[0] - 2 if rows[0] >= 2 and lines[rows[0] - 1] == "" and lines[rows[0] - 2].strip() else rows[0]
    shown = " ".join(c if re.fullmatch(r"[\w./=:,+-]+", c) else repr(c) for c in command)
    results.mkdir(parents=True, exist_ok=True)
    body = "\n".join(lines[start : rows[-1] + 1])
    (results / f"{name}.md").write_text(f"`{shown}` ({machine_line()})\n\n{body}\n")
    return 0

def private_ray_env(prefix: str) -> bool:
    """Point this process's local Ray at its own temp dir (so it never meets another local Ray on the
    machine), with token auth on and no tracking server; True when the temp dir is ours to remove."""
    own_tmp = "RAY_TMPDIR" not in os.environ
    if own_tmp:
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    return own_tmp


def start_private_ray() -> None:
    """A private local Ray of 2 CPUs, recorded as the current cluster in its own temp dir (as the
    engine does), so Ray Train's placement-group cleaner asks this cluster and no other."""
    import ray
    from ray._private.utils import write_ray_address

    ray.init(address="local", num_cpus=2, log_to_driver=False, configure_logging=False)
    write_ray_address(ray.get_runtime_context().gcs_address)


def main() -> int:
    if sys.argv[1:2] == ["capture"]:
        if len(sys.argv) < 4:
            print("usage: report.py capture NAME -- COMMAND ...", file=sys.stderr)
            return 2
        return capture(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    found = {p.stem: clean(p.read_text()) for p in sorted(args.results.glob("*.md"))}
    if not found:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    args.doc.write_text(refresh(args.doc.read_text(), found, machine_line()))
    print(f"{args.doc}: refreshed {', '.join(sorted(found))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

