"""The notebooks' Python API without Ray: shipped specs by name, bad input named, empty workdirs refused."""

import pytest

from tests.conftest import ROOT
from workflows import api as lc
from workflows.spec import SpecError


def test_a_shipped_spec_loads_by_name_with_overrides():
    resolved = lc.load("tiny", "finetune.max_steps=70")
    assert resolved.spec.name == "tiny" and resolved.configs["finetune"].max_steps == 70
    assert lc.load(ROOT / "workflows" / "smoke.yaml").spec.name == "smoke"


def test_bad_overrides_and_unknown_specs_name_what_is_wrong():
    with pytest.raises(SpecError, match="finetune.*max_steps"):
        lc.load("tiny", "finetune.max_steps=zero")
    with pytest.raises(SpecError, match="no-such-spec"):
        lc.load("no-such-spec")


@pytest.mark.parametrize("call", [lc.runs, lc.report, lambda w: lc.history(w, "pretrain"), lambda w: lc.lineage(w, "deploy")])
def test_a_folder_without_runs_is_refused_without_creating_a_database(tmp_path, call):
    with pytest.raises(SpecError, match="no lifecycle runs here"):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []
