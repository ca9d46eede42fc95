"""Render ``lifecycle plan``'s dicts as rich tables: one model (``plan.build_plan``) or every
training step of a spec (``plan_spec.build_spec_plan``). The dicts are what ``--json`` prints."""

from __future__ import annotations

import sys

from components.core.memory import GB, format_gb


def print_plan(plan: dict) -> None:
    """Render ``build_plan``'s dict as a rich table plus a few lines of context."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    i = plan["inputs"]
    setup = _setup_name(i["strategy"], i["stage"], i["cpu_offload"])
    title = (f"{_count(i['n_params'])} params, {i['precision']}, {setup}, "
             f"{i['devices']} device{'s' if i['devices'] > 1 else ''} x {i['device_memory_gb']:g} GB")
    console.print(f"Training memory per device: {title}", markup=False, style="bold")
    table = Table()
    table.add_column("component")
    table.add_column("GB", justify="right")
    b = plan["per_device_bytes"]
    for key, label in (("weights", "weights"), ("gradients", "gradients"),
                       ("optimizer_states", "optimizer states"), ("activations", "activations")):
        table.add_row(label, _cell(b[key]))
    table.add_row("total", _cell(b["total"]), style="bold")
    if plan["cpu_bytes"]:
        table.add_row("host RAM (node)", _cell(plan["cpu_bytes"]), style="dim")
    console.print(table)

    def line(label, text):
        console.print(f"{label}: {text}", markup=False)

    line("Fits", f"{'yes' if plan['fits'] else 'NO'} ({format_gb(b['total'])} GB of {i['device_memory_gb']:g} GB)")
    line("Model states", plan["accounting"])
    line("Activations", plan["activations_method"])
    s = {k: format_gb(v) for k, v in plan["storage_bytes"].items()}
    line("Storage (weights only)", f"fp32 {s['fp32']} GB | 16-bit {s['16-bit']} GB | 8-bit {s['8-bit']} GB")
    doc = plan["doc_rule_of_thumb"]
    line("Source rule of thumb (fp32)",
         f"breakdown {doc['breakdown_bytes_per_param']} bytes/param -> {format_gb(doc['breakdown_gb'] * GB)} GB; "
         f"\"~{doc['headline_multiplier']}x\" headline -> {format_gb(doc['headline_gb'] * GB)} GB")
    console.print(doc["explanation"], markup=False, style="dim")
    r = plan["recommendation"]
    line("Recommendation", r["reason"])


def print_spec_plan(plan: dict) -> None:
    """Render ``build_spec_plan``'s dict: a header, one table row per training step, notes, verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # logs: no wrap at 80

    def line(text, style=None):
        console.print(text, markup=False, style=style)

    scale, spec, cluster, memory_gb = plan["scale"], plan["spec"], plan["cluster"], plan["gpu_memory_gb"]
    if plan["on_gpu"]:
        workers = (f"{scale['workers']} workers x {scale['gpus_per_worker']:g} GPU, "
                   f"{_plural(scale['cpus_per_worker'], 'CPU')} each")
        gpus = (f"cluster: {cluster['gpus']:g} GPUs ({cluster['source']})" if cluster["gpus"] is not None
                else "cluster: not checked (give --gpus N or --address ADDR)")
        where = f"{gpus}, {memory_gb:g} GB per GPU"
    else:
        workers = f"{scale['workers']} CPU workers, {_plural(scale['cpus_per_worker'], 'CPU')} each"
        where = "runs on CPU workers (scale.gpus_per_worker 0): the figures are host RAM per worker, no GPU memory to fit"
    line(f"Training memory plan for {spec['name']} ({spec['path']}): {workers}", style="bold")
    line(where)
    table = Table()
    for column, justify in (("step", "left"), ("phase", "left"), ("params", "right"), ("strategy", "left"),
                            ("precision", "left"), ("micro-batch x seq", "right"),
                            ("GB per GPU" if plan["on_gpu"] else "GB per worker", "right"), ("fits", "left"),
                            ("recommended", "left")):
        table.add_column(column, justify=justify)
    for s in plan["steps"]:
        if not s["planned"]:
            table.add_row(s["step"], s["phase"], "-", "role actors", "-", "-", "-", "-", "-", style="dim")
            continue
        total = s["per_gpu_bytes"] if plan["on_gpu"] else s["per_device_bytes"]["total"]
        fits = {True: "yes", False: "NO"}[s["fits"]]
        r = s["recommendation"]
        table.add_row(s["step"], s["phase"], _count(s["n_params"]), short_setup(s["strategy"], s["stage"], s["cpu_offload"]),
                      s["precision"], f"{s['micro_batch']} x {s['seq']}", _cell(total), fits,
                      short_setup(r["strategy"], r["stage"], r["cpu_offload"]),
                      style=None if s["fits"] is not False else "bold red")
    console.print(table)
    for s in plan["steps"]:
        if s["notes"]:
            line(f"{s['step']}: {'; '.join(s['notes'])}", style="dim")
    for problem in plan["problems"]:
        line(f"Problem: {problem}", style="bold red")
    if not plan["problems"] and plan["on_gpu"]:
        line(f"Fits: every training step fits {memory_gb:g} GB per GPU"
             + (f", on the cluster's {cluster['gpus']:g} GPUs." if cluster["gpus"] is not None else "."))
    elif not plan["problems"]:
        line(f"Fits: on CPU workers, every training step within the host's {plan['host_memory_gb']:.0f} GB of memory"
             + (f" (the cluster's {cluster['gpus']:g} GPUs go unused: scale.gpus_per_worker=1 would train on them)."
                if cluster["gpus"] else "."))


def _setup_name(strategy: str, stage: int | None, offload: bool) -> str:
    name = {"ddp": "DDP", "fsdp": "FSDP (full shard)", "deepspeed": f"DeepSpeed ZeRO stage {stage}"}[strategy]
    return name + (" + CPU offload" if offload else "")


def _cell(n_bytes: int) -> str:
    # Fixed two decimals line the column up; tiny models keep significant digits instead of 0.00.
    return f"{n_bytes / GB:.2f}" if n_bytes >= 0.1 * GB or n_bytes == 0 else format_gb(n_bytes)


def _count(n: int) -> str:
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _plural(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def short_setup(strategy: str, stage: int | None, offload: bool) -> str:
    """A table cell for a setup: "DDP", "FSDP", "DeepSpeed ZeRO-3 + offload"."""
    name = {"ddp": "DDP", "fsdp": "FSDP", "deepspeed": f"DeepSpeed ZeRO-{stage}"}[strategy]
    return name + (" + offload" if offload else "")
