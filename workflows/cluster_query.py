"""The GPUs and CPUs of a running Ray cluster, for ``lifecycle plan --spec --address``; never starts a Ray."""

from __future__ import annotations

import os

from workflows.plan_model import PlanError


def host_memory_bytes() -> int:
    """This machine's physical memory in bytes (what CPU workers of a local run share)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cluster_resources(address: str) -> dict:
    """``{"gpus": n, "cpus": n, "memory_bytes": n}`` of the running Ray cluster at ``address``; never starts a Ray.

    A dashboard URL (``http://HEAD:8265``, what ``lifecycle submit`` takes) is asked through
    Ray's State API: the ALIVE nodes' ``resources_total``, summed. Any other address
    (``HOST:6379``, ``ray://HOST:10001``, ``auto``) is joined as a driver for
    ``ray.cluster_resources()`` and left again. "local" (it would start a Ray here) is refused;
    an unreachable cluster is a PlanError (exit 2).
    """
    if address == "local":
        raise PlanError("--address local would start a Ray here; give a running cluster (HOST:6379, ray://HOST:10001, "
                        "http://HOST:8265, auto)")
    if address.startswith(("http://", "https://")):
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], limit=100_000, detail=True,
                               raise_on_missing_output=False)
        except Exception as e:  # connection refused, authentication, a URL that is not a Ray dashboard
            raise PlanError(f"--address {address}: cannot list the cluster's nodes: {_first_line(e)}") from None
        totals = {"GPU": 0.0, "CPU": 0.0, "memory": 0.0}
        for node in nodes:
            for key in totals:
                totals[key] += float((node.resources_total or {}).get(key, 0))
        return {"gpus": totals["GPU"], "cpus": totals["CPU"], "memory_bytes": int(totals["memory"])}
    import ray

    connect = not ray.is_initialized()
    try:
        if connect:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
    except Exception as e:  # ConnectionError, or whatever the client raises for a bad address
        raise PlanError(f"--address {address}: cannot reach a running Ray cluster: {_first_line(e)}") from None
    finally:
        if connect and ray.is_initialized():
            ray.shutdown()
    return {"gpus": float(resources.get("GPU", 0)), "cpus": float(resources.get("CPU", 0)),
            "memory_bytes": int(resources.get("memory", 0))}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

