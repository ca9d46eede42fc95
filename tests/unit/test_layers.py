"""The layering rules: components/core stays pure; only tracking.py imports mlflow."""

import ast
from pathlib import Path

from tests.conftest import ROOT


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_ray_or_mlflow():
    for path in (ROOT / "components" / "core").rglob("*.py"):
        assert not imported_roots(path) & {"ray", "mlflow"}, path


def test_only_tracking_imports_mlflow():
    offenders = [
        p for top in ("components", "workflows") for p in (ROOT / top).rglob("*.py")
        if "mlflow" in imported_roots(p) and p.name != "tracking.py"
    ]
    assert offenders == []
