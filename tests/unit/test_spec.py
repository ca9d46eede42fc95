"""Spec validation: every error names file, line, step and field; nothing starts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.checkpoints import save_checkpoint
from tests.conftest import ROOT
from workflows import cli
from workflows.spec import SpecError, apply_override, load_spec

GOOD = """\
name: t
steps:
  corpus:
    uses: data
  tok:
    uses: tokenizer
    needs: [corpus]
  pre:
    uses: pretrain
    needs: [corpus, tok]
    with:
      max_steps: 50
      warmup_steps: 5
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_and_starts_with_its_command(path, tmp_path):
    # A base step's source must exist to validate: point it at a tiny checkpoint (nothing downloads here).
    base = [f"{name}.source={save_checkpoint(tmp_path / 'base', 'llama', chat=True)}"
            for name, step in yaml.safe_load(path.read_text())["steps"].items() if step["uses"] == "base"]
    resolved = load_spec(path, base, workdir=tmp_path / "wd")
    assert resolved.order
    assert path.read_text().startswith(f"# lifecycle run workflows/{path.name}")


def test_good_spec_orders_steps_topologically(tmp_path):
    resolved = load_spec(write(tmp_path, GOOD))
    assert resolved.order == ["corpus", "tok", "pre"]
    assert resolved.configs["pre"].max_steps == 50


@pytest.mark.parametrize(
    "change, expected",
    [
        (("      max_steps: 50", "      max_stpes: 50"), r"spec.yaml:12: step 'pre', field 'max_stpes': Extra inputs"),
        (("      max_steps: 50", "      max_steps: lots"), r"spec.yaml:12: step 'pre', field 'max_steps': Input should be a valid integer"),
        (("    uses: tokenizer", "    uses: tokeniser"), r"spec.yaml:6: step 'tok', field 'uses': unknown phase 'tokeniser'"),
        (("    needs: [corpus, tok]", "    needs: [corpus, tokk]"), r"spec.yaml:10: step 'pre', field 'needs': no step named 'tokk'"),
        (("    needs: [corpus, tok]", "    needs: [corpus]"), r"step 'pre', field 'needs': phase 'pretrain' consumes \['dataset', 'tokenizer'\]"),
        (("name: t", "name: t\nstepz: {}"), r"spec.yaml:2: field 'stepz': Extra inputs"),
        (("    uses: data", "    uses: data\n    needs: [pre]"),
         r"spec.yaml:8: step 'tok', field 'needs': the steps form a cycle: 'tok' needs 'corpus', 'pre' needs 'tok', 'corpus' needs 'pre'"),
        # A repeated key would silently win over the first: both lines are named.
        (("      warmup_steps: 5", "      warmup_steps: 5\n      max_steps: 80"),
         r"spec.yaml:14: key 'max_steps' is repeated \(first on line 12\)"),
        (("  tok:", "  pre: {uses: data}\n  tok:"), r"spec.yaml:9: key 'pre' is repeated \(first on line 5\)"),
        # Strict types: YAML has real booleans, so `true` for a count is a mistake, not 1.
        (("      max_steps: 50", "      max_steps: true"), r"spec.yaml:12: step 'pre', field 'max_steps': Input should be a valid integer \(got True\)"),
        (("      max_steps: 50", "      max_steps: '50'"), r"spec.yaml:12: step 'pre', field 'max_steps': Input should be a valid integer"),
        (("  tok:", "  tok: [x"), r"spec.yaml:\d+: not valid YAML"),
    ],
)
def test_bad_specs_name_file_line_step_and_field(tmp_path, change, expected):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_overrides_shorthand_full_path_and_yaml_values(tmp_path):
    path = write(tmp_path, GOOD)
    resolved = load_spec(path, ["pre.lr=1e-3", "pre.model.n_layer=2", "scale.workers=1", "steps.tok.with.vocab_size=300"])
    assert resolved.configs["pre"].lr == 1e-3
    assert resolved.configs["pre"].model.n_layer == 2
    assert resolved.spec.scale.workers == 1
    assert resolved.configs["tok"].vocab_size == 300


@pytest.mark.parametrize(
    "override, expected",
    [
        ("pre.lr", "expected KEY.SUBKEY=VALUE"),
        ("pre..lr=1", "expected KEY.SUBKEY=VALUE"),
        ("steps.nope.with.lr=1", "has no step 'nope'"),
        ("pre.lr=[1", "not valid YAML"),
        ("pre.lr=-1", "step 'pre', field 'lr': Input should be greater than 0"),
        # Absurd sizes are typos: refused by the schema, not planned as a 142-billion-GB model.
        ("pre.model.n_embd=65536", "field 'model.n_embd': Input should be less than or equal to 32768"),
        ("pre.model.n_positions=1000000000", "field 'model.n_positions': Input should be less than or equal to 1048576"),
        ("pre.max_steps=1e20", "field 'max_steps': Input should be a valid integer"),
        ("pre.max_steps=100000000000000000000", "field 'max_steps': Input should be less than or equal to 100000000"),
    ],
)
def test_bad_overrides(tmp_path, override, expected):
    with pytest.raises(SpecError, match=expected.replace("[", r"\[")):
        load_spec(write(tmp_path, GOOD), [override])


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; strict validation would then refuse it.
    resolved = load_spec(write(tmp_path, GOOD.replace("      warmup_steps: 5", "      warmup_steps: 5\n      lr: 1e-3")), ["pre.weight_decay=1E-2"])
    assert resolved.configs["pre"].lr == 1e-3 and resolved.configs["pre"].weight_decay == 1e-2


def test_apply_override_parses_values():
    doc = {"steps": {"a": {"uses": "data"}}}
    apply_override(doc, "a.max_documents=10")
    apply_override(doc, "a.needs=[x, y]")
    assert doc["steps"]["a"] == {"uses": "data", "with": {"max_documents": 10}, "needs": ["x", "y"]}


def test_malformed_data_file_is_caught_before_ray_with_file_and_line(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": 3}\n')
    with pytest.raises(SpecError, match=r"corpus.jsonl:3: .*must be a string"):
        load_spec(write(tmp_path, GOOD), [f"corpus.source={data}"])


def test_cli_bad_input_exits_2_without_ray_or_workdir(tmp_path):
    # A fresh interpreter (the test session itself may already be connected to Ray), one for all cases.
    workdir = tmp_path / "wd"
    bad = write(tmp_path, GOOD.replace("max_steps: 50", "max_steps: -5"), "bad.yaml")
    probe = (
        "import contextlib, io, json, sys, ray; from workflows import cli\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = cli.main(argv)\n"
        "    print(json.dumps([rc, ray.is_initialized(), err.getvalue()]))\n"
    )
    cases = [
        ["run", str(bad), "--workdir", str(workdir)],
        ["run", str(tmp_path / "missing.yaml"), "--workdir", str(workdir)],
        ["run", str(write(tmp_path, GOOD)), "pre.max_steps=nope=3", "--workdir", str(workdir)],
        ["serve", "tiny-finetune", "port=abc", "--workdir", str(workdir)],
        ["serve", "tiny-finetune", "--workdir", str(workdir)],  # no runs there
        ["report", "--workdir", str(workdir)],
    ]
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(cases)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(cases), out.stdout + out.stderr
    for argv, (rc, ray_started, stderr) in zip(cases, results):
        assert rc == 2 and not ray_started, (argv, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, (argv, stderr)
    assert "field 'max_steps'" in results[0][2]
    assert not workdir.exists()
    assert cli.main(["validate", str(write(tmp_path, GOOD))]) == 0


ENDPOINT = GOOD + """\
  ins:
    uses: instructions
  ft:
    uses: finetune
    needs: [pre, ins, corpus]
  ev:
    uses: evaluate
    needs: [ft, ins]
  gate:
    uses: gate
    needs: [ev]
  serve:
    uses: deploy
    needs: [gate]
  live:
    uses: evaluate
    needs: [ft, serve]
    with:
      lm_eval_tasks: [lifecycle_sst2]
"""


def test_an_evaluate_step_after_deploy_scores_the_served_model_with_lm_eval_tasks(tmp_path):
    assert load_spec(write(tmp_path, ENDPOINT)).order[-1] == "live"
    # The endpoint's scores come from lm-eval: a step that names no task would score nothing on it.
    with pytest.raises(SpecError, match=r"spec.yaml:\d+: step 'live', field 'needs': the endpoint of 'serve' is scored by lm-eval's "
                                        r"tasks, and lm_eval_tasks is empty"):
        load_spec(write(tmp_path, ENDPOINT.replace("    with:\n      lm_eval_tasks: [lifecycle_sst2]\n", "")))
    # Its model input builds lm-eval's requests (the tokenizer): it must be the model the endpoint serves.
    with pytest.raises(SpecError, match=r"step 'live', field 'needs': 'serve' serves the model of 'ft', and this step's model is 'pre'"):
        load_spec(write(tmp_path, ENDPOINT.replace("    needs: [ft, serve]", "    needs: [pre, serve]")))
