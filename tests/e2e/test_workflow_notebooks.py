"""The quickstart, lineage and applications notebooks, executed top to bottom by a real Jupyter kernel against the
tiny workflow's run that the end-to-end test made (the sweep notebook runs in tests/integration/test_sweep.py,
against the sweep that test made). A failing cell fails the test."""

import json
import tempfile
from pathlib import Path

import mlflow
import pytest

from components import tracking
from tests.conftest import ROOT, delete_serve_app, execute_notebook, lifecycle, notebook_images, notebook_text
from workflows.spec import load_spec


@pytest.mark.full  # `./scripts/test.sh --full`: about 3 minutes on 2 cores
def test_quickstart_lineage_and_applications_notebooks_run_top_to_bottom_on_the_tiny_run(tiny_run, ray_address, serve_port):
    workdir = str(tiny_run.workdir)
    uri = tracking.tracking_uri_for(tiny_run.workdir)

    # The quickstart runs tiny.yaml again in the same workdir: all cache hits (an endpoint is never one).
    nb, seconds = execute_notebook("01_quickstart.ipynb", WORKDIR=workdir, ADDRESS=ray_address,
                                   OVERRIDES=[*tiny_run.overrides, f"deploy.port={serve_port}"])
    print(f"01_quickstart (cached): {seconds:.0f}s")
    latest = tracking.recent_workflows(uri, limit=1)[0]
    steps = {s["step"]: s["state"] for s in latest["steps"]}
    assert steps == {name: "done" if name == "deploy" else "cached" for name in load_spec(ROOT / "workflows" / "tiny.yaml").order}, steps
    # The re-run's report compares the cached evaluations too (published while the deploy step ran).
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(mlflow.MlflowClient(uri).download_artifacts(latest["run_id"], "report.md", tmp)).read_text()
    assert "eval-grpo" in report and "eval-prune" in report, report[:500]
    text = notebook_text(nb)
    assert "completion:" in text and "tiny-finetune" in text and notebook_images(nb) >= 2
    status = json.loads(lifecycle("status", "--workdir", workdir, "--json").stdout)  # the CLI sees the notebook's run
    assert status[0]["workflow"] == "tiny" and status[0]["status"] == "FINISHED"
    delete_serve_app("lifecycle-rag")
    delete_serve_app("lifecycle")  # its replica's CPU is needed by the tests that follow

    # Lineage and compression read the same run: no training.
    nb, seconds = execute_notebook("03_lineage_and_compression.ipynb", WORKDIR=workdir)
    print(f"03_lineage_and_compression: {seconds:.0f}s")
    text = notebook_text(nb)
    assert "eval-finetune (evaluate)" in text and "corpus/train" in text and notebook_images(nb) >= 1

    # The applications on the fine-tuned model: the RAG route, PAL against direct answers, ReAct, LangChain.
    nb, seconds = execute_notebook("04_applications.ipynb", WORKDIR=workdir, ADDRESS=ray_address, PORT=serve_port)
    print(f"04_applications: {seconds:.0f}s")
    text = notebook_text(nb)
    assert "'recall@3': 0.95" in text and "pal_exact_match=" in text and "| stopped:" in text, text[-3000:]


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_lora_rank_sweep.ipynb", "03_lineage_and_compression.ipynb",
                                  "04_applications.ipynb"])
def test_the_readme_links_every_notebook(name):
    assert (ROOT / "notebooks" / name).exists() and f"](notebooks/{name})" in (ROOT / "README.md").read_text()
