"""``lifecycle submit`` and ``lifecycle jobs``: run a workflow on a Ray cluster as a Ray Job.

The spec is validated here first (bad input exits 2 and nothing is submitted); the job then
runs ``python -m workflows.cli run SPEC ... --no-wait`` on the cluster, from this project's
files uploaded as the job's working directory, so the cluster runs the code you have::

    lifecycle submit workflows/smoke.yaml pretrain.max_steps=50 --address http://HEAD:8265 --follow
    lifecycle jobs --address http://HEAD:8265

Token authentication: with ``RAY_AUTH_TOKEN`` set (or ``~/.ray/auth_token`` present) the
requests carry the token, as ``ray job submit`` does.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from workflows.spec import SpecError, load_spec

# Passed to the job when set here; anything else with --env KEY=VALUE. Credentials are not
# forwarded by default: they would show in the job's runtime environment on the dashboard.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
# Never uploaded with the working directory (Ray also skips what .gitignore lists).
EXCLUDES = [".git", ".venv", ".lifecycle", "mlruns", "**/__pycache__", "*.egg-info"]


def _default_address() -> str | None:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")


def add_parsers(sub) -> None:
    """Register ``submit`` and ``jobs`` on the CLI's subparsers."""
    submit = sub.add_parser("submit", help="submit a workflow to a Ray cluster as a Ray Job (prints the job id)")
    submit.add_argument("spec", help="workflow YAML inside --working-dir, e.g. workflows/gpt2-124m.yaml")
    submit.add_argument("overrides", nargs="*", help="KEY.SUB=VALUE, as for `lifecycle run`")
    submit.add_argument("--address", default=_default_address(),
                        help="the cluster's dashboard, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs and exit with its status (0 succeeded, 1 not)")
    submit.add_argument("--working-dir", default=".", help="project folder uploaded as the job's working directory (default: .)")
    submit.add_argument("--storage", default=os.environ.get("LIFECYCLE_STORAGE"),
                        help="artifacts and checkpoints on the cluster: a shared path or s3:// / gs:// URI (default: LIFECYCLE_STORAGE)")
    submit.add_argument("--workdir", help="the run's working folder on the cluster (default: ./.lifecycle in the job's directory)")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job (repeatable)")
    submit.add_argument("--pip", action="append", default=[], metavar="REQ",
                        help="extra pip requirement installed for the job (repeatable); the cluster's image has the project's own")

    jobs = sub.add_parser("jobs", help="list the Ray Jobs of a cluster (newest last)")
    jobs.add_argument("--address", default=_default_address(), help="the cluster's dashboard, e.g. http://HEAD:8265")
    jobs.add_argument("--json", action="store_true")


def job_request(args) -> dict:
    """The Jobs SDK's ``submit_job`` arguments for these command-line arguments; SpecError on bad input."""
    resolved = load_spec(args.spec, args.overrides)  # before anything is submitted
    working_dir = Path(args.working_dir).resolve()
    if not working_dir.is_dir():
        raise SpecError(f"--working-dir {args.working_dir}: not a directory")
    try:
        spec = Path(args.spec).resolve().relative_to(working_dir)
    except ValueError:
        raise SpecError(f"{args.spec}: not inside the working directory {working_dir} (it is uploaded with it)") from None
    env = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    command = ["python", "-m", "workflows.cli", "run", spec.as_posix(), *args.overrides, "--no-wait"]
    if args.storage:
        command += ["--storage", args.storage]
    if args.workdir:
        command += ["--workdir", args.workdir]
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env}
    if args.pip:
        runtime_env["pip"] = list(args.pip)
    return {"entrypoint": shlex.join(command), "runtime_env": runtime_env,
            "metadata": {"workflow": resolved.spec.name, "spec": spec.as_posix(), "submitted_by": "lifecycle"}}


def _client(address: str | None):
    if not address:
        raise SpecError("no cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    token_file = Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # read by Ray when it is imported, just below
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SpecError(f"--address {address}: {str(e).splitlines()[0]}") from None


def submit(args, console) -> int:
    request = job_request(args)
    client = _client(args.address)
    job_id = _submit(client, request)
    print(job_id, flush=True)
    if not args.follow:
        console.print(f"follow it with: lifecycle submit ... --follow, or ray job logs --follow {job_id}", highlight=False)
        return 0
    try:
        asyncio.run(_print_logs(client, job_id))
    except KeyboardInterrupt:
        console.print(f"\nthe job keeps running; stop it with: ray job stop {job_id}", highlight=False)
        return 130
    status = str(client.get_job_status(job_id).value)
    console.print(f"job {job_id}: {status}", highlight=False)
    return 0 if status == "SUCCEEDED" else 1


def _submit(client, request: dict, patience_s: float = 120) -> str:
    """submit_job, retried while the head's job agent is still starting (a cluster just created)."""
    deadline = time.time() + patience_s
    while True:
        try:
            return client.submit_job(**request)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise SpecError(f"the cluster refused the job: {str(e).splitlines()[0]}") from None
            time.sleep(3)


async def _print_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def jobs(args, console) -> int:
    import json

    from rich.table import Table

    details = sorted(_client(args.address).list_jobs(), key=lambda j: j.start_time or 0)
    rows = [{"job_id": j.submission_id or j.job_id, "status": str(j.status.value), "workflow": (j.metadata or {}).get("workflow", ""),
             "start_time": j.start_time, "end_time": j.end_time, "entrypoint": j.entrypoint} for j in details]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table("job", "status", "workflow", "entrypoint")
    for r in rows:
        table.add_row(r["job_id"], r["status"], r["workflow"], r["entrypoint"][:80])
    console.print(table)
    return 0
