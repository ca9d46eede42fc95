"""The sandbox's child process: `python -I -S -B sandbox_child.py`, started by `sandbox.run_program`.

Reads one JSON request on stdin ({source, cpu_s, memory_bytes, output_chars, modules, builtins}),
imports the allowed modules, locks itself in (`lock_down`), runs the program with a minimal
builtins table and writes one JSON line {ok, result, stdout, error, layers} to stdout. Standard
library only: it runs without site-packages and imports nothing from this project.

The builtins table is not a wall: any Python object leads back to the interpreter (a function's
`__globals__`, `().__class__.__base__.__subclasses__()`), so the program must be assumed to hold
`os`, `ctypes` and this module. What holds is what the kernel enforces after `lock_down`:

- descriptors: stdin is closed after the request is read, every descriptor above 2 is closed,
  and RLIMIT_NOFILE is 0, so no file, socket or pipe can be opened or duplicated; what is left is
  stdout (the reply file, capped by RLIMIT_FSIZE) and stderr (/dev/null);
- user: started as root (as in the containers and CI), it drops to `nobody` with setgroups,
  setgid, setuid after the steps that need root, and checks it cannot get root back; started as
  another user it is already unprivileged;
- resource limits, hard and soft alike (an unprivileged process cannot raise a hard limit): CPU
  seconds, address space, file size, no processes (RLIMIT_NPROC 0), no descriptors, no core files;
- seccomp: no_new_privs, then a filter that allows only the system calls an interpreter needs to
  compute and write to descriptors it already holds (memory, signals, time, read, write, ...);
  every other call fails with EPERM: open, exec, fork, clone, socket, kill, ptrace, unlink,
  mkdir, getdents, ... A foreign system-call ABI (x32, i386 on x86_64) kills the process.

These fail closed: if any cannot be set up, the program is not run and the reply says why.
Two more layers are best-effort, because seccomp already forbids what they guard and an
unprivileged container may not permit them: as root, a new network and IPC namespace
(`unshare`, needs CAP_SYS_ADMIN) and a chroot into the empty working folder (needs CAP_SYS_CHROOT).
`layers` in the reply names the layers that were set up.
"""

import ctypes
import json
import os
import resource
import sys
import types

# System calls the locked-down interpreter may make, as (x86_64, aarch64) numbers; everything else
# fails with EPERM. Enough to run Python code, allocate, handle signals and the CPU limit, read the
# clock and write the reply; nothing that names a path, makes a descriptor or a process.
_ALLOWED_SYSCALLS = {
    "read": (0, 63), "write": (1, 64), "close": (3, 57), "fstat": (5, 80), "newfstatat": (262, 79),
    "lseek": (8, 62), "mmap": (9, 222), "mprotect": (10, 226), "munmap": (11, 215), "brk": (12, 214),
    "rt_sigaction": (13, 134), "rt_sigprocmask": (14, 135), "rt_sigreturn": (15, 139), "pread64": (17, 67),
    "readv": (19, 65), "writev": (20, 66), "mremap": (25, 216), "madvise": (28, 233), "getpid": (39, 172),
    "exit": (60, 93), "exit_group": (231, 94), "futex": (202, 98), "gettid": (186, 178),
    "getrandom": (318, 278), "clock_gettime": (228, 113), "clock_getres": (229, 114),
    "clock_nanosleep": (230, 115), "nanosleep": (35, 101), "gettimeofday": (96, 169),
    "sched_yield": (24, 124), "sigaltstack": (131, 132), "getrusage": (98, 165), "fcntl": (72, 25),
    "getuid": (102, 174), "geteuid": (107, 175), "getgid": (104, 176), "getegid": (108, 177),
    "getppid": (110, 173), "uname": (63, 160), "sysinfo": (99, 179), "statx": (332, 291), "rseq": (334, 293),
    "getcwd": (79, 17), "sched_getaffinity": (204, 123), "getresuid": (118, 148), "getresgid": (120, 150),
    "getgroups": (115, 158),
}
# AUDIT_ARCH_* of the two ABIs above, as the kernel reports them in seccomp_data.arch.
_ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}
_CLONE_NEWIPC, _CLONE_NEWNET = 0x08000000, 0x40000000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_EPERM = 1


class OutputLimit(BaseException):
    """Raised by print past the cap; a BaseException so `except Exception` in the program cannot swallow it."""


class SandboxUnavailable(Exception):
    """A required layer of the lock-down could not be set up; the program is not run."""


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.stdin.close()
    cap = int(request["output_chars"])
    import builtins
    import importlib

    # Modules are imported before the lock-down (imports open files) and handed out as namespaces of
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
    reply = {"ok": True, "result": "", "stdout": "", "error": "", "layers": []}
    try:
        reply["layers"] = lock_down(cpu_s=int(request["cpu_s"]), memory_bytes=int(request["memory_bytes"]),
                                    reply_bytes=6 * 2 * cap + 65536)  # JSON escapes a character into <= 6 bytes
    except SandboxUnavailable as e:
        reply.update(ok=False, error=f"sandbox unavailable: {e}")
        _write(reply)
        return

    scope = {"__builtins__": table, "__name__": "sandbox"}
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
    _write(reply)


def lock_down(cpu_s: int, memory_bytes: int, reply_bytes: int) -> list[str]:
    """Shut this process in (see the module docstring); the names of the layers set up.

    Raises SandboxUnavailable when a required layer fails. Call once, after every import.
    """
    layers = []
    try:
        arch, column = _ARCHES[os.uname().machine]
    except KeyError:
        raise SandboxUnavailable(f"no seccomp filter for the {os.uname().machine!r} architecture") from None
    libc = ctypes.CDLL(None, use_errno=True)

    os.closerange(3, 2**31 - 1)  # every descriptor above stderr, whatever the inherited limit (close_range)
    layers.append("descriptors")

    if os.geteuid() == 0:
        uid, gid = _nobody()  # before the chroot hides /etc/passwd
        if libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC) == 0:  # best-effort
            layers.append("namespaces")
        try:  # best-effort; the working folder is empty (the reply file lives one level up)
            os.chroot(".")
            os.chdir("/")
            layers.append("chroot")
        except OSError:
            pass
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            raise SandboxUnavailable(f"cannot drop root to uid {uid}: {e}") from None
        if 0 in os.getresuid() or 0 in os.getresgid() or os.getgroups():
            raise SandboxUnavailable("still root after dropping privileges")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SandboxUnavailable("root could be regained after dropping privileges")
        layers.append("user")

    try:
        _limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU at the soft limit, SIGKILL one second later
        _limit(resource.RLIMIT_AS, memory_bytes)
        _limit(resource.RLIMIT_FSIZE, reply_bytes)
        _limit(resource.RLIMIT_NPROC, 0)  # no processes (root ignores it; root is gone by now)
        _limit(resource.RLIMIT_NOFILE, 0)  # no new descriptors at all
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_MEMLOCK, 0)
    except (OSError, ValueError) as e:
        raise SandboxUnavailable(f"cannot set resource limits: {e}") from None
    layers.append("rlimits")

    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    program = _seccomp_program(arch, sorted(numbers[column] for numbers in _ALLOWED_SYSCALLS.values()))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise SandboxUnavailable(f"cannot install the seccomp filter: {os.strerror(ctypes.get_errno())}")
    layers.append("seccomp")
    return layers


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_program(arch: int, allowed: list[int]) -> _SockFprog:
    """A classic-BPF seccomp filter: kill on a foreign ABI, allow the listed calls, EPERM for the rest."""
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    kill, errno, allow = 0x80000000, 0x00050000, 0x7FFF0000  # SECCOMP_RET_KILL_PROCESS, _ERRNO, _ALLOW
    n = len(allowed)
    code = [(ld_abs, 0, 0, 4),  # seccomp_data.arch
            (jeq, 1, 0, arch),
            (ret, 0, 0, kill),
            (ld_abs, 0, 0, 0)]  # seccomp_data.nr
    # x32 calls on x86_64 are nr | 0x40000000: they match nothing here and get EPERM.
    code += [(jeq, n - i, 0, nr) for i, nr in enumerate(allowed)]  # jump to the final ALLOW
    code += [(ret, 0, 0, errno | _EPERM), (ret, 0, 0, allow)]
    filters = (_SockFilter * len(code))(*[_SockFilter(*c) for c in code])
    program = _SockFprog(len(code), filters)
    program._keep = filters  # the array must outlive the prctl call
    return program


def _nobody() -> tuple[int, int]:
    """uid and gid of the unprivileged user to run as: `nobody`, else 65534."""
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


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


def _write(reply: dict) -> None:
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
