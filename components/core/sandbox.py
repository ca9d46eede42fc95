"""A locked-down interpreter for short model-written programs (program-aided answers, the ReAct calculator).

Two walls, each meant to hold on its own:

1. `check_program` parses the program and refuses, before anything runs, every node or name
   outside an allow-list: imports other than `ALLOWED_MODULES`, names starting with "_"
   (dunders, `__import__`, `__builtins__`), attribute names that are not plain methods of
   built-in value types or public names of the allowed modules (so no `__class__`, no frame
   or code attributes, no `str.format` field lookups), the builtins that reach the runtime
   (`eval`, `exec`, `open`, `compile`, `getattr`, `globals`, `type`, ...), class definitions,
   generators, `async`, `with`, `global`, `match`. A program nested too deeply to parse is
   refused too.
2. `run_program` runs it in a fresh `python -I -S` subprocess (never in the caller's process)
   that assumes the program can reach all of Python (`os`, `ctypes`) and relies on the kernel
   instead (`sandbox_child.lock_down`): no descriptors but its stdout and stderr and none to be
   opened, root dropped to `nobody`, hard resource limits (CPU, address space, file size, no
   processes, no descriptors), and a seccomp allow-list of system calls under which opening a
   path, a socket, a process or an exec fails with EPERM. If any of these cannot be set up the
   program is not run ("sandbox unavailable"). As root it also enters new network and IPC
   namespaces and chroots into an empty folder, where permitted (best-effort: seccomp already
   forbids what they guard). The caller adds a wall-clock timeout and kills the process group.
   Its stdout is a file capped by RLIMIT_FSIZE, and `print` inside is capped too, so a huge
   output ends the program instead of filling memory. Linux on x86_64 or aarch64 only.

The result of a program is the value of its variable `answer`, else the return value of its
function `solution()`, else what it printed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ALLOWED_MODULES = ("math", "fractions", "itertools", "statistics")
# Module attributes a program may use (public, and not themselves modules: `statistics.sys` would
# hand out the interpreter). The child exposes exactly these, not the modules.
SAFE_MODULE_NAMES = {
    "math": None,  # None: every public non-module attribute
    "fractions": ("Fraction",),
    "itertools": None,
    "statistics": ("mean", "median", "mode", "stdev", "variance", "fmean", "pstdev", "pvariance", "median_low",
                   "median_high", "multimode", "quantiles", "geometric_mean", "harmonic_mean"),
}
SAFE_BUILTINS = (
    "abs", "all", "any", "bin", "bool", "chr", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "hex",
    "int", "isinstance", "len", "list", "map", "max", "min", "oct", "ord", "pow", "print", "range", "repr", "reversed",
    "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "OverflowError", "StopIteration", "TypeError",
    "ValueError", "ZeroDivisionError",
)
# Never callable, whatever else changes: the ways out of a Python sandbox.
FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "open", "compile", "getattr", "setattr", "delattr", "hasattr", "globals", "locals", "vars", "dir",
    "input", "breakpoint", "help", "type", "object", "super", "memoryview", "bytearray", "classmethod",
    "staticmethod", "property", "__import__", "__builtins__", "exit", "quit", "id", "hash", "iter", "next", "format",
})
_FORBIDDEN_NODES = (
    ast.ClassDef, ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith, ast.Await, ast.Yield, ast.YieldFrom, ast.With,
    ast.Global, ast.Nonlocal,
    ast.Match,  # class patterns read attributes by keyword: `case int(__class__=c)` would bypass the attribute check
)
# Attribute names: the methods and properties of the value types a program builds. Not `format` /
# `format_map` (their "{0.__class__}" fields are attribute lookups the AST cannot see) and nothing
# starting with "_".
_VALUE_TYPES = (str, int, float, complex, list, dict, set, frozenset, tuple, range, slice, bool)
SAFE_ATTRIBUTES = frozenset(
    name for t in _VALUE_TYPES for name in dir(t) if not name.startswith("_") and name not in ("format", "format_map", "mro")
) | {"limit_denominator", "numerator", "denominator", "from_float", "from_decimal", "as_integer_ratio"}


class UnsafeProgram(ValueError):
    """The program uses something outside the allow-list; nothing was run."""


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program produced.

    ok: it ran to the end; result: `answer` / `solution()` / printed text as a string ("" when
    none); stdout: printed text (at most the output cap); error: why it failed ("" when ok);
    refused: True when `check_program` rejected it (it never ran); layers: the child's lock-down
    layers that were set up ("descriptors", "namespaces", "chroot", "user", "rlimits", "seccomp").
    """

    ok: bool
    result: str
    stdout: str
    error: str
    refused: bool = False
    layers: tuple[str, ...] = ()


def _module_names() -> dict[str, frozenset[str]]:
    import importlib
    import types

    names = {}
    for module, listed in SAFE_MODULE_NAMES.items():
        m = importlib.import_module(module)
        public = listed or [n for n in dir(m) if not n.startswith("_")]
        names[module] = frozenset(n for n in public if not isinstance(getattr(m, n, None), types.ModuleType))
    return names


MODULE_NAMES = _module_names()


def check_program(source: str, max_chars: int = 4000) -> ast.Module:
    """The parsed program if every node is allowed, else `UnsafeProgram` naming the first offence and its line."""
    if len(source) > max_chars:
        raise UnsafeProgram(f"program of {len(source)} characters is longer than {max_chars}")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise UnsafeProgram(f"syntax error: {e.msg} (line {e.lineno})") from None
    except (RecursionError, MemoryError):  # e.g. "-" * 3990 + "1": the parser's own nesting limit
        raise UnsafeProgram("the program is nested too deeply to check") from None
    attributes = SAFE_ATTRIBUTES.union(*MODULE_NAMES.values())
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")

        def refuse(why: str, line=line):  # called at once; the default pins this node's line
            raise UnsafeProgram(f"line {line}: {why}")

        if isinstance(node, _FORBIDDEN_NODES):
            refuse(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_MODULES:
                    refuse(f"import of {alias.name!r} is not allowed (allowed: {', '.join(ALLOWED_MODULES)})")
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module not in ALLOWED_MODULES:
                refuse(f"import from {node.module!r} is not allowed (allowed: {', '.join(ALLOWED_MODULES)})")
            for alias in node.names:
                if alias.name not in MODULE_NAMES[node.module]:
                    refuse(f"{node.module}.{alias.name} is not allowed")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr not in attributes:
                refuse(f"attribute {node.attr!r} is not allowed")
        elif isinstance(node, ast.Name):
            if (node.id.startswith("_") and node.id != "_") or node.id in FORBIDDEN_NAMES:
                refuse(f"name {node.id!r} is not allowed")
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs] + [
                a.arg for a in (args.vararg, args.kwarg) if a]
            if isinstance(node, ast.FunctionDef):
                names.append(node.name)
                if node.decorator_list:
                    refuse("decorators are not allowed")
            for name in names:
                if name.startswith("_") and name != "_" or name in FORBIDDEN_NAMES:
                    refuse(f"name {name!r} is not allowed")
        elif isinstance(node, ast.alias) and node.asname and (node.asname.startswith("_") or node.asname in FORBIDDEN_NAMES):
            refuse(f"name {node.asname!r} is not allowed")
        elif isinstance(node, ast.ExceptHandler) and node.name and node.name.startswith("_"):
            refuse(f"name {node.name!r} is not allowed")
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            refuse(f"keyword {node.arg!r} is not allowed")
    return tree


def run_program(source: str, *, timeout_s: float = 5.0, cpu_s: int = 2, memory_mb: int = 256,
                output_chars: int = 10_000, _skip_check_for_tests: bool = False) -> RunResult:
    """Check `source`, then run it in a locked-down subprocess.

    timeout_s: wall-clock seconds before the process group is killed; cpu_s: CPU seconds
    (RLIMIT_CPU); memory_mb: address space (RLIMIT_AS) of the whole interpreter;
    output_chars: most printed characters kept before the program is stopped.
    _skip_check_for_tests: for tests only, to try the second wall on its own; never set it elsewhere.
    """
    if not _skip_check_for_tests:
        try:
            check_program(source)
        except UnsafeProgram as e:
            return RunResult(False, "", "", str(e), refused=True)
    request = json.dumps({"source": source, "cpu_s": cpu_s, "memory_bytes": memory_mb * 2**20,
                          "output_chars": output_chars, "modules": {k: sorted(v) for k, v in MODULE_NAMES.items()},
                          "builtins": list(SAFE_BUILTINS)})
    child = Path(__file__).with_name("sandbox_child.py")
    with tempfile.TemporaryDirectory(prefix="sandbox-") as work:
        out_path = Path(work) / "out.json"
        empty = Path(work) / "empty"  # the child's working folder, and its root where it may chroot
        empty.mkdir(mode=0o555)
        with open(out_path, "wb") as out:
            # -I: no environment variables, no user site, script dir not on sys.path; -S: no site-packages.
            # No preexec_fn (unsafe in a threaded Serve replica): the child locks itself down.
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", str(child)], stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.DEVNULL, cwd=empty, env={}, close_fds=True,
                                    start_new_session=True)
            try:
                proc.communicate(request.encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunResult(False, "", "", f"time limit: still running after {timeout_s:g} s wall clock")
        # The child's stdout is capped by RLIMIT_FSIZE, so this read is bounded.
        raw = out_path.read_bytes()
    if proc.returncode != 0:
        return RunResult(False, "", "", _death(proc.returncode, cpu_s))
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    # The program may have written this file itself, so nothing in it is trusted to have a shape.
    if not isinstance(reply, dict) or not isinstance(reply.get("layers", []), list):
        return RunResult(False, "", "", "the sandbox gave no readable result")
    return RunResult(bool(reply.get("ok")), str(reply.get("result", "")), str(reply.get("stdout", "")),
                     str(reply.get("error", "")), layers=tuple(str(x) for x in reply.get("layers", [])))


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.kill()  # the group is the child's own (it cannot leave it), this is for certainty
    proc.wait()


def _death(code: int, cpu_s: int) -> str:
    import signal

    if code < 0:
        sig = -code
        if sig == signal.SIGXCPU or sig == signal.SIGKILL:
            return f"time limit: more than {cpu_s} CPU seconds"
        if sig == signal.SIGXFSZ:
            return "output limit: the program wrote too much"
        return f"killed by signal {signal.Signals(sig).name}"
    return f"the sandbox exited with status {code}"
