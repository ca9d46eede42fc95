"""The sandbox's second wall on its own: known escapes run in the real child process with the AST check
skipped (`_skip_check_for_tests`, a keyword only tests use). Each program reaches `os` or the real
builtins through Python's introspection, as a program that got past the first wall would, and must
then be stopped by the child's lock-down (descriptors, user, rlimits, seccomp), with the host unharmed.
The first wall and the normal path are tested in test_apps_core.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import components.core.sandbox as sandbox
from components.core.sandbox import UnsafeProgram, check_program, run_program

FAST = dict(timeout_s=3.0, cpu_s=1, memory_mb=128, output_chars=1000)
# Two ways out of a builtins table: a function's globals (the child module's, which hold the real
# builtins) and object's subclasses (os._wrap_close's globals are the os module's).
VIA_GLOBALS = "B = print.__globals__['__builtins__']\nos = B.__import__('os')\n"
VIA_SUBCLASSES = ("os_globals = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
                  ".__init__.__globals__\nB = os_globals['sys'].modules['builtins']\nos = B.__import__('os')\n")


def unchecked(source: str, **limits) -> sandbox.RunResult:
    """Run `source` in the child without the AST check; a mistake in the test program itself fails the test."""
    result = run_program(source, _skip_check_for_tests=True, **{**FAST, **limits})
    assert not result.error.startswith(("NameError", "SyntaxError", "AttributeError", "TypeError")), result
    return result


@pytest.fixture
def open_dir(tmp_path):
    """A world-writable folder, so that only the sandbox (not file modes) can stop a write into it."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    return d


def test_the_introspection_routes_reach_os_in_the_child():
    """The premise: without the AST check the program does reach `os`; what it can do with it is tested below."""
    for route in (VIA_GLOBALS, VIA_SUBCLASSES):
        result = unchecked(route + "answer = os.getpid() > 0")
        assert result.ok and result.result == "True", result


def test_every_required_layer_is_set_up():
    result = run_program("answer = 1")
    assert result.ok and {"descriptors", "rlimits", "seccomp"} <= set(result.layers), result
    if os.geteuid() == 0:
        assert "user" in result.layers
        ids = unchecked(VIA_GLOBALS + "answer = 0 in os.getresuid() + os.getresgid() or len(os.getgroups()) > 0")
        assert ids.ok and ids.result == "False", ids
        assert unchecked(VIA_GLOBALS + "os.setuid(0)").error.startswith("PermissionError"), "root came back"


@pytest.mark.parametrize("route", [VIA_GLOBALS, VIA_SUBCLASSES], ids=["globals", "subclasses"])
@pytest.mark.parametrize("action", [
    "answer = os.system('touch {marker}')",
    "pid = os.fork()\nif pid == 0:\n    os.execv('/usr/bin/touch', ['touch', '{marker}'])\nanswer = pid",
    "answer = os.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})",
    # stdin and stderr closed first: two free descriptor slots for subprocess's pipe
    "os.closerange(0, 1)\nos.closerange(2, 3)\nanswer = B.__import__('subprocess').run(['touch', '{marker}']).returncode",
], ids=["system", "fork-exec", "posix_spawn", "subprocess"])
def test_no_process_can_be_started(open_dir, route, action):
    marker = open_dir / "marker"
    result = unchecked(route + action.format(marker=marker))
    time.sleep(0.2)
    assert not marker.exists(), result
    assert not result.ok or result.result != "0", result


def test_no_file_can_be_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0")
    secret.chmod(0o644)
    # A descriptor the host leaves inheritable by mistake must not reach the child either.
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    program = VIA_GLOBALS + f"""
got = []
for attempt in (lambda: B.open('/etc/passwd').read(), lambda: os.read(os.open('/etc/passwd', 0), 100),
                lambda: B.open('{secret}').read(), lambda: B.open('/proc/self/environ').read()):
    try:
        got.append(attempt())
    except Exception:
        pass
for n in range(256):  # descriptor numbers: inherited or guessable
    try:
        got.append(os.read(n, 100).decode())
    except Exception:
        pass
    try:
        got.append(os.pread(n, 100, 0).decode())
    except Exception:
        pass
answer = [text for text in got if text]  # stderr is /dev/null: reading it gives ''
"""
    try:
        result = unchecked(program)
    finally:
        os.close(fd)
    assert result.ok and result.result == "[]", result


def test_no_directory_can_be_listed():
    for target in ("'/'", "'.'", "'/proc/self/fd'"):
        result = unchecked(VIA_GLOBALS + f"answer = os.listdir({target})")
        assert not result.ok and result.error.startswith("PermissionError"), (target, result)


def test_no_file_can_be_written(open_dir):
    for n, write in enumerate([
        "B.open('{path}', 'w').write('x')",
        "os.write(os.open('{path}', os.O_WRONLY | os.O_CREAT, 0o666), b'x')",
        "os.mkdir('{path}')",
        "os.symlink('/etc/passwd', '{path}')",
    ]):
        path = open_dir / f"written{n}"
        result = unchecked(VIA_GLOBALS + write.format(path=path))
        assert not result.ok and not path.exists() and not path.is_symlink(), (write, result)


def test_no_network():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = VIA_GLOBALS + f"""
try:  # the socket module, where it can still be imported
    s = B.__import__('socket').create_connection(('127.0.0.1', {port}), timeout=1)
    answer = 'connected'
except Exception as e:
    ctypes = B.__import__('ctypes')  # the raw system call
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)
    address = (b'\\x02\\x00' + ({port}).to_bytes(2, 'big') + B.bytes([127, 0, 0, 1])).ljust(16, b'\\0')
    answer = 'connected' if fd >= 0 and libc.connect(fd, address, 16) == 0 else 'refused'
"""
    try:
        result = unchecked(program)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert result.ok and result.result == "refused", result


def test_limits_cannot_be_raised():
    """Hard limits: an unprivileged process can lower them, never raise them (root could)."""
    program = VIA_GLOBALS + """
resource = B.__import__('resource')
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
except Exception:
    pass
x = B.bytearray(512 * 2**20)
answer = len(x)
"""
    result = unchecked(program, memory_mb=128)
    assert not result.ok and "memory limit" in result.error, result


def test_deep_nesting_is_refused_by_the_checker_and_survived_by_the_child():
    deep = "-" * 3990 + "1"
    with pytest.raises(UnsafeProgram, match="nested too deeply"):
        check_program(deep)
    refused = run_program(deep)
    assert refused.refused and "nested too deeply" in refused.error
    survived = unchecked(deep)
    assert not survived.ok and "recursion" in survived.error, survived


@pytest.mark.parametrize("source, error", [
    ("def f(n):\n    return f(n + 1)\nanswer = f(0)", "recursion"),
    ("x = [0] * (10 ** 10)", "memory limit"),
    (VIA_GLOBALS + "x = B.bytearray(2**33)", "memory limit"),
    ("while True:\n    pass", "time limit"),
    (VIA_GLOBALS + "B.__import__('time').sleep(60)", "time limit"),  # no CPU used: the wall clock ends it
])
def test_resource_exhaustion_without_the_checker(source, error):
    started = time.time()
    result = unchecked(source)
    assert not result.ok and error in result.error, result
    assert time.time() - started < 6


def test_an_infinite_loop_leaves_nothing_behind(open_dir):
    """A program that forks a helper out of its process group before looping: the timeout must leave no process."""
    marker = open_dir / "survivor"
    program = VIA_GLOBALS + f"""
try:
    pid = os.fork()
except Exception:
    pid = 1
if pid == 0:
    os.setsid()
    B.__import__('time').sleep(1.5)
    B.open('{marker}', 'w').write('still here')
    os._exit(0)
while True:
    pass
"""
    result = unchecked(program)
    assert not result.ok and "time limit" in result.error, result
    time.sleep(2.5)
    assert not marker.exists()


def _child(tmp_path: Path, patch: str) -> dict:
    """Run sandbox_child.main with `patch` applied first; its JSON reply."""
    child_dir = Path(sandbox.__file__).parent
    request = {"source": "answer = 42", "cpu_s": 1, "memory_bytes": 128 * 2**20, "output_chars": 100,
               "modules": {}, "builtins": list(sandbox.SAFE_BUILTINS)}
    code = f"import sys\nsys.path.insert(0, {str(child_dir)!r})\nimport sandbox_child as c\n{patch}\nc.main()"
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code], input=json.dumps(request),
                         capture_output=True, text=True, timeout=10, env={}, cwd=tmp_path)
    return json.loads(out.stdout)


def test_a_layer_that_cannot_be_set_up_stops_the_run(tmp_path):
    """Fail closed: the program is not run when seccomp (or, as root, the drop to nobody) is unavailable."""
    assert _child(tmp_path, "")["result"] == "42"  # the harness itself works
    patches = ["c._ARCHES.clear()",  # no seccomp filter for this machine
               "c._PR_SET_SECCOMP = 9999"]  # prctl refuses the filter
    if os.geteuid() == 0:
        patches.append("def refuse(*a):\n    raise PermissionError(1, 'not permitted')\nc.os.setuid = refuse")
    for patch in patches:
        reply = _child(tmp_path, patch)
        assert not reply["ok"] and reply["result"] == "" and reply["error"].startswith("sandbox unavailable"), (patch, reply)
