"""The comparison report: every evaluated checkpoint of a run against every metric, with deltas.

Input is plain data (one row per evaluate step: the step, the model step it scored, its
metrics); output is Markdown, HTML (with the plot embedded) and a matplotlib figure. Deltas are
against the first row, the earliest checkpoint in workflow order (usually the pretrained base).
"""

from __future__ import annotations

import base64
import html
import io

# Headline columns, in reading order; per-family and per-suite metrics follow in the details.
HEADLINE = ("perplexity", "forgetting_ratio", "response_nll", "exact_match", "rouge1_f1", "rouge2_f1", "rougeL_f1", "bleu",
            "accuracy", "calibration_ece", "robustness", "model_bytes")
LOWER_IS_BETTER = {"perplexity", "forgetting_ratio", "response_nll", "calibration_ece", "model_bytes"}
# Not compared across checkpoints: each evaluate step times its replicas while whatever else the DAG
# runs beside it competes for the CPUs (the tiny run's fine-tuned model "generated" at 750 tokens/s and
# the pretrained one, the same architecture, at 1,800). Speed comparisons come from the compression
# steps, which time the source and its compressed copy taking turns in one process.
NOT_COMPARABLE = {"tokens_per_s"}


def columns(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(headline metrics present in any row, every other metric present), each in a stable order."""
    present = {k for r in rows for k in r["metrics"]} - NOT_COMPARABLE
    head = [k for k in HEADLINE if k in present]
    return head, sorted(present - set(head))


def _cell(value: float | None, base: float | None, first: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}"
    if first or base is None:
        return text
    delta = value - base
    return f"{text} ({delta:+.3g})"


def table_rows(rows: list[dict], keys: list[str]) -> list[list[str]]:
    """The headline table's cells, a row per model: `value (delta vs the first row)`."""
    base = rows[0]["metrics"] if rows else {}
    return [[r["model"], r["step"], *(_cell(r["metrics"].get(k), base.get(k), i == 0) for k in keys)] for i, r in enumerate(rows)]


def detail_rows(rows: list[dict], keys: list[str]) -> list[list[str]]:
    """The detail table's cells, transposed (a row per metric, a column per model): there are many metrics."""
    base = rows[0]["metrics"] if rows else {}
    return [[k, *(_cell(r["metrics"].get(k), base.get(k), i == 0) for i, r in enumerate(rows))] for k in keys]


def markdown(rows: list[dict], title: str = "Evaluation report") -> str:
    """A Markdown report: the headline table, then the detailed one (per family and suite)."""
    if not rows:
        return f"## {title}\n\nNo evaluate step in this run.\n"
    head, detail = columns(rows)
    out = [f"## {title}", "", f"Deltas are against `{rows[0]['model']}`; lower is better for {', '.join(sorted(LOWER_IS_BETTER))}.", ""]
    if head:
        out.append("| model | evaluate step | " + " | ".join(head) + " |")
        out.append("|---|---|" + "---|" * len(head))
        out.extend("| " + " | ".join(cells) + " |" for cells in table_rows(rows, head))
        out.append("")
    if detail:
        out.append("| metric | " + " | ".join(r["model"] for r in rows) + " |")
        out.append("|---|" + "---|" * len(rows))
        out.extend("| " + " | ".join(cells) + " |" for cells in detail_rows(rows, detail))
        out.append("")
    return "\n".join(out)


def figure(rows: list[dict]):
    """One bar chart per headline metric, models side by side (matplotlib Figure)."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch, nothing to close

    head, _ = columns(rows)
    keys = head or ["(none)"]
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    names = [r["model"] for r in rows]
    for ax, key in zip(axes.flat, keys):
        values = [r["metrics"].get(key, float("nan")) for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_title(key + (" (lower better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def size_quality_figure(rows: list[dict], quality: tuple[str, ...] = ("exact_match", "rougeL_f1", "perplexity")):
    """Quality against size on disk, a point per evaluated model (the compression trade-off), or None
    when fewer than two models have both."""
    from matplotlib.figure import Figure

    keys = [k for k in quality if sum(k in r["metrics"] and "model_bytes" in r["metrics"] for r in rows) >= 2]
    if not keys:
        return None
    fig = Figure(figsize=(4.2 * len(keys), 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, r in enumerate(rows):
            if key in r["metrics"] and "model_bytes" in r["metrics"]:
                x, y = r["metrics"]["model_bytes"] / 1e6, r["metrics"][key]
                ax.scatter([x], [y], color=f"C{i}")
                ax.annotate(r["model"], (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("weights on disk (MB)")
        ax.set_title(key + (" (lower better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle("size against quality", fontsize=10)
    fig.tight_layout()
    return fig


def html_page(rows: list[dict], fig=None, title: str = "Evaluation report") -> str:
    """A standalone HTML page: the tables and the plot as an embedded PNG."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
             f"<h2>{html.escape(title)}</h2>"]
    if rows:
        parts.append(f"<p>Deltas are against <code>{html.escape(rows[0]['model'])}</code>.</p>")
        head, detail = columns(rows)
        tables = (["model", "evaluate step", *head], table_rows(rows, head)), (["metric", *(r["model"] for r in rows)], detail_rows(rows, detail))
        for header, cells in tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
            parts.append("</table>")
    if fig is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        parts.append(f"<img alt='metrics by model' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def publish(uri: str, workflow_run_id: str) -> str | None:
    """Build the report of a workflow run from its evaluate steps' runs, log it to the workflow's run
    (report.md, report.html, report.png); returns the Markdown, or None when nothing was evaluated."""
    from components import tracking

    rows = tracking.evaluations(uri, workflow_run_id)
    if not rows:
        return None
    fig = figure(rows)
    text = markdown(rows)
    tracking.log_text(uri, workflow_run_id, text, "report.md")
    tracking.log_text(uri, workflow_run_id, html_page(rows, fig), "report.html")
    tracking.log_figure(uri, workflow_run_id, fig, "report.png")
    trade_off = size_quality_figure(rows)
    if trade_off is not None:
        tracking.log_figure(uri, workflow_run_id, trade_off, "size_quality.png")
    return text
