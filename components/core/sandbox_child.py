"""The sandbox's child process: `python -I -S -B sandbox_child.py`, started by `sandbox.run_program`.

Reads one JSON request on stdin ({source, cpu_s, memory_bytes, output_chars, modules, builtins}),
limits itself, runs the already-checked program with a minimal builtins table and writes one
JSON line {ok, result, stdout, error} to stdout. Standard library only: it runs without
site-packages and imports nothing from this project.
"""

import json
import resource
import sys
import types


class OutputLimit(BaseException):
    """Raised by print past the cap; a BaseException so `except Exception` in the program cannot swallow it."""


def main() -> None:
    request = json.loads(sys.stdin.read())
    cap = int(request["output_chars"])
    import builtins
    import importlib

    # Modules are imported before the limits (imports open files) and handed out as namespaces of
    # their allowed names only, never as module objects.
    namespaces = {}
    for name, allowed in request["modules"].items():
        module = importlib.import_module(name)
        namespaces[name] = types.SimpleNamespace(**{n: getattr(module, n) for n in allowed})
    printed: list[str] = []
    size = [0]

    def capped_print(*args, sep=" ", end="\n"):
        text = str(sep).join(str(a) for a in args) + str(end)
        if size[0] + len(text) > cap:
            raise OutputLimit(f"output limit: more than {cap} characters printed")
        printed.append(text)
        size[0] += len(text)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name not in namespaces:
            raise ImportError(f"import of {name!r} is not allowed")
        return namespaces[name]

    table = {n: getattr(builtins, n) for n in request["builtins"] if hasattr(builtins, n)}
    table.update(print=capped_print, __import__=guarded_import)

    cpu = int(request["cpu_s"])
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL one second later
    _limit(resource.RLIMIT_AS, request["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, 6 * 2 * cap + 65536)  # enough for the reply (JSON escapes a character into <= 6 bytes)
    _limit(resource.RLIMIT_NPROC, 0)  # no fork (ignored for root, who cannot fork without os anyway)
    _limit(resource.RLIMIT_NOFILE, 4)  # stdin, stdout, stderr: no new files or sockets

    scope = {"__builtins__": table, "__name__": "sandbox"}
    reply = {"ok": True, "result": "", "stdout": "", "error": ""}
    try:
        exec(compile(request["source"], "<program>", "exec"), scope)
        if "answer" in scope:
            result = scope["answer"]
        elif callable(scope.get("solution")):
            result = scope["solution"]()
        else:
            result = "".join(printed).strip()
        reply["result"] = _text(result, cap)
    except OutputLimit as e:
        reply.update(ok=False, error=str(e))
    except MemoryError:
        reply.update(ok=False, error="memory limit: the program needed more memory than allowed")
    except RecursionError:
        reply.update(ok=False, error="recursion limit exceeded")
    except Exception as e:  # the program's own error, reported like a traceback's last line
        reply.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
    reply["stdout"] = "".join(printed)
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a resource limit; never above a hard limit the parent already set (that would fail)."""
    _, current = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _text(value, cap: int) -> str:
    try:
        text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    except ValueError as e:  # an int too long to print
        raise OverflowError(str(e)) from None
    if len(text) > cap:
        raise OutputLimit(f"output limit: a result of more than {cap} characters")
    return text


if __name__ == "__main__":
    main()
