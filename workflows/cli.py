"""The `lifecycle` command: run, submit, jobs, serve, validate, plan, lineage, report, status.

Exit codes: 0 success, 1 a step failed, 2 bad input (nothing started, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from workflows import submit
from workflows.plan import add_plan_parser, run_plan
from workflows.spec import DEFAULT_WORKDIR, SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifecycle", description="Take a language model from raw text to a live endpoint on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a workflow spec (validated completely first)")
    run.add_argument("spec", help="workflow YAML, e.g. workflows/tiny.yaml")
    run.add_argument("overrides", nargs="*", help="KEY.SUB=VALUE, e.g. pretrain.max_steps=100 or scale.workers=1")
    run.add_argument("--workdir", default=DEFAULT_WORKDIR, help="everything the run writes goes here (default ./.lifecycle)")
    run.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to use (default: RAY_ADDRESS, else start a local Ray)")
    run.add_argument("--no-wait", action="store_true", help="exit when the workflow ends, even if it deployed an endpoint on a local Ray")
    run.add_argument("--storage", default=os.environ.get("LIFECYCLE_STORAGE"),
                     help="artifacts and Ray Train checkpoints: a folder every node reads, or s3:// / gs:// (default: LIFECYCLE_STORAGE, else --workdir)")

    submit.add_parsers(sub)

    serve = sub.add_parser("serve", help="deploy a registered model on Ray Serve: an OpenAI-compatible API at http://HOST:PORT/v1")
    serve.add_argument("model", help="models:/NAME/VERSION, models:/NAME@ALIAS, or NAME (its latest version)")
    serve.add_argument("overrides", nargs="*", help="deploy settings KEY=VALUE, e.g. port=8001 replicas=2 (see components/deploy/config.py)")
    serve.add_argument("--workdir", default=DEFAULT_WORKDIR)
    serve.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to use (default: RAY_ADDRESS, else start a local Ray)")
    serve.add_argument("--no-wait", action="store_true", help="exit once the endpoint answers (it stops with a local Ray)")

    check = sub.add_parser("validate", help="validate a spec and its overrides without running anything")
    check.add_argument("spec")
    check.add_argument("overrides", nargs="*")

    add_plan_parser(sub)

    lineage = sub.add_parser("lineage", help="walk a run or registered model back to its datasets")
    lineage.add_argument("ref", help="an MLflow run id or models:/NAME/VERSION (or models:/NAME/@ALIAS)")
    lineage.add_argument("--workdir", default=DEFAULT_WORKDIR)
    lineage.add_argument("--json", action="store_true", help="print JSON instead of a table")

    report = sub.add_parser("report", help="the evaluation report of a workflow run: every checkpoint against every metric")
    report.add_argument("run_id", nargs="?", help="the workflow's MLflow run id (default: the latest run)")
    report.add_argument("--workdir", default=DEFAULT_WORKDIR)
    report.add_argument("--html", metavar="FILE", help="also write the HTML report (tables and plots) here")

    status = sub.add_parser("status", help="recent workflow runs and their steps")
    status.add_argument("--workdir", default=DEFAULT_WORKDIR)
    status.add_argument("--limit", type=int, default=5)
    status.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160, emoji=False)  # logs: no wrap at 80; ":100:" is a line number
    try:
        if args.command == "plan":
            return run_plan(args)
        if args.command == "validate":
            resolved = load_spec(args.spec, args.overrides)
            console.print(f"{args.spec}: valid, steps in order: {' -> '.join(resolved.order)}")
            return 0
        if args.command == "run":
            return _run(args, console)
        if args.command == "submit":
            return submit.submit(args, console)
        if args.command == "jobs":
            return submit.jobs(args, console)
        if args.command == "serve":
            return _serve(args, console)
        if args.command == "lineage":
            return _lineage(args, console)
        if args.command == "status":
            return _status(args, console)
        if args.command == "report":
            return _report(args, console)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


def _run(args, console: Console) -> int:
    resolved = load_spec(args.spec, args.overrides, args.workdir)  # before anything starts or is written
    from workflows import engine
    from workflows.progress import Display, summary_table

    # A local Ray that serves an endpoint stays up after the workflow, until Ctrl-C.
    hold = not args.no_wait and not args.address and any(
        s.uses == "deploy" and resolved.configs[n].wait for n, s in resolved.spec.steps.items())
    with Display(console, log=Path(args.workdir) / "lifecycle.log") as display:
        run_id, outcomes = engine.run(resolved, Path(args.workdir), args.address, display, keep_ray=hold,
                                      storage_root=args.storage)
    console.print(summary_table(outcomes, run_id))
    for o in outcomes:  # a step's report.md (a sweep's results table) is worth reading here
        report = o.artifact.path / "report.md" if o.artifact else None
        if report and report.exists():
            console.print(report.read_text(), markup=False, highlight=False)
    if any(o.phase == "evaluate" and o.artifact for o in outcomes):
        from components import tracking
        from components.evaluate.report import markdown

        rows = tracking.evaluations(tracking.tracking_uri_for(Path(args.workdir)), run_id)
        console.print(markdown(rows), markup=False, highlight=False)
    failed = [o for o in outcomes if o.state == "failed"]
    for o in failed:
        console.print(f"[red]step {o.step} failed:[/red] {escape(o.error)}")  # an error may hold [brackets]
    endpoints = [o.artifact.metrics["url"] for o in outcomes if o.phase == "deploy" and o.artifact]
    for o in outcomes:
        if o.phase == "deploy" and o.artifact:
            rag = f" and RAG at {o.artifact.metrics['rag_url']}" if o.artifact.metrics.get("rag_url") else ""
            console.print(f"endpoint: {o.artifact.metrics['served_model']} at {o.artifact.metrics['url']}{rag}", highlight=False)
    if hold:
        if endpoints:
            _hold(console, endpoints[0])
        _stop_local_ray()
    return 1 if failed else 0


def _serve(args, console: Console) -> int:
    from components.deploy import registry
    from workflows.spec import apply_override

    settings: dict = {}
    for item in args.overrides:
        apply_override(settings, item, "lifecycle serve")
    # The same resolution as a RayService's `components.deploy.registry:app` (before Ray starts).
    try:
        cfg, model, adapters = registry.prepare(args.model, settings, Path(args.workdir))
    except ValueError as e:
        raise SpecError(str(e)) from None
    from components.deploy.step import rag_url, start
    from workflows.engine import start_ray

    # start_ray says whether this process connected; only a Ray it started itself (no --address) is its own
    # to hold and stop: on a cluster the endpoint stays up for everyone after the command returns.
    started = start_ray(args.address) and not args.address
    url = start(cfg, model, adapters)
    meta = model["metadata"]
    rag = rag_url(cfg)
    # A registered adapter is served under its own name, over its base: name what a client asks for.
    served = meta.get("adapter") or model["id"]
    over = f" over its base model {model['id']}" if meta.get("adapter") else ""
    console.print(f"serving {served} (models:/{meta['registered_model']}/{meta['version']}){over} at {url}"
                  + (f" and RAG at {rag}" if rag else ""))
    if started and not args.no_wait:
        _hold(console, url)
    if started:
        _stop_local_ray()
    return 0


def _hold(console: Console, url: str) -> None:
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and a plain `kill` both stop serving (a shell may start background jobs with SIGINT ignored).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    console.print(f"serving at {url} (OpenAI API; try: curl {url}/models). Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping the endpoint")


def _stop_local_ray() -> None:
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def _tracking_uri(workdir: str) -> str:
    from components import tracking

    try:
        return tracking.existing_uri(Path(workdir))
    except ValueError as e:
        raise SpecError(str(e)) from None


def _lineage(args, console: Console) -> int:
    from rich.table import Table

    from components import tracking

    try:
        chain = tracking.lineage(_tracking_uri(args.workdir), args.ref)
    except SpecError:
        raise
    except Exception as e:  # unknown run or model version
        raise SpecError(f"{args.ref}: not found in {args.workdir}: {str(e).splitlines()[0]}") from None
    if args.json:
        print(json.dumps(chain, indent=1))
        return 0
    table = Table(title=f"lineage of {args.ref}")
    for col in ("step", "phase", "run id", "model", "datasets (digest) or checkpoint", "inputs"):
        table.add_column(col)
    for node in chain:
        datasets = "\n".join([f"{d['name']} ({d['digest']})" for d in node["datasets"]]
                             + ([f"checkpoint {node['checkpoint']}"] if node.get("checkpoint") else []))
        table.add_row(node["step"], node["phase"], node["run_id"], node["model"], datasets, ",".join(i[:8] for i in node["inputs"]))
    console.print(table)
    return 0


def _report(args, console: Console) -> int:
    from components import tracking
    from components.evaluate import report

    uri = _tracking_uri(args.workdir)
    run_id = args.run_id
    if run_id is None:
        latest = tracking.recent_workflows(uri, 1)
        if not latest:
            raise SpecError(f"{args.workdir}: no workflow runs yet")
        run_id = latest[0]["run_id"]
    try:
        rows = tracking.evaluations(uri, run_id)
    except Exception as e:  # unknown run id
        raise SpecError(f"{run_id}: not a workflow run in {args.workdir}: {str(e).splitlines()[0]}") from None
    console.print(report.markdown(rows, f"Evaluation report of run {run_id}"), markup=False, highlight=False)
    if args.html:
        fig = report.figure(rows) if rows else None
        Path(args.html).write_text(report.html_page(rows, fig, f"Evaluation report of run {run_id}"))
        console.print(f"wrote {args.html}")
    return 0


def _status(args, console: Console) -> int:
    from rich.table import Table

    from components import tracking

    runs = tracking.recent_workflows(_tracking_uri(args.workdir), args.limit)
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    for run in runs:
        table = Table(title=f"{run['workflow']}  {run['run_id']}  {run['status']}")
        for col in ("step", "state", "MLflow run", "headline"):
            table.add_column(col)
        for step in run["steps"]:
            table.add_row(step["step"], step["state"], step["run_id"] or "", step["headline"] or "")
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
