"""The layering rules: components/core stays pure, also through the project modules it imports;
only tracking.py imports mlflow."""

import ast
from pathlib import Path

from tests.conftest import ROOT
from tests.unit.test_import_cycles import import_graph, project_modules


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def impure_chains(modules: dict[str, Path], forbidden: set[str]) -> list[str]:
    """For each components.core module that reaches a `forbidden` package, directly or through the
    project modules it imports (any depth, function-local imports too): the chain, as text."""
    graph = import_graph(modules)
    chains = []
    for start in sorted(m for m in modules if m == "components.core" or m.startswith("components.core.")):
        came_from: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            module = todo.pop(0)
            bad = imported_roots(modules[module]) & forbidden
            if bad:
                chain = [module]
                while came_from[chain[-1]] is not None:
                    chain.append(came_from[chain[-1]])
                chains.append(" -> ".join(reversed(chain)) + f" imports {', '.join(sorted(bad))}")
                break
            for nxt in graph[module]:
                if nxt not in came_from:
                    came_from[nxt] = module
                    todo.append(nxt)
    return chains


def test_core_never_imports_ray_or_mlflow():
    assert impure_chains(project_modules(), {"ray", "mlflow"}) == []


def test_the_layering_check_sees_through_project_modules(tmp_path):
    # A core module that imports a project module that imports ray breaks the rule as much as `import ray`.
    files = {"components/__init__.py": "", "components/core/__init__.py": "", "components/helper.py": "import ray\n",
             "components/core/pure.py": "import torch\n", "components/core/leaky.py": "def f():\n    from components import helper\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = {".".join(Path(n).with_suffix("").parts).removesuffix(".__init__"): tmp_path / n for n in files}
    assert impure_chains(modules, {"ray"}) == ["components.core.leaky -> components.helper imports ray"]


def test_only_tracking_imports_mlflow():
    offenders = [
        p for top in ("components", "workflows") for p in (ROOT / top).rglob("*.py")
        if "mlflow" in imported_roots(p) and p.name != "tracking.py"
    ]
    assert offenders == []


def test_validating_a_spec_imports_no_torch():
    # `lifecycle validate` and the start of `lifecycle run` read every phase's config and check: without
    # torch and transformers that took 0.4 s instead of 7 s on 2 cores.
    import subprocess
    import sys

    code = ("import sys; from workflows.spec import load_spec; load_spec('workflows/tiny.yaml'); "
            "print(sorted({'torch', 'transformers', 'peft', 'ray'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
