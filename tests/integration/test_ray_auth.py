"""Ray's token authentication stays on: a client without the cluster's token is refused."""

import os
import subprocess
import sys


def test_wrong_token_is_refused(ray_address):
    """The GCS answers a wrong token with InvalidAuthToken (the client would retry for 20 s, then fail)."""
    env = {**os.environ, "RAY_AUTH_TOKEN": "0" * 64}
    code = f"import ray; ray.init(address='{ray_address}'); print('connected')"
    client = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in client.stdout:  # ends when the client exits
            seen.append(line)
            if "Unauthenticated" in line and "InvalidAuthToken" in line:
                break
        assert "connected\n" not in seen and any("InvalidAuthToken" in line for line in seen), "".join(seen)[-2000:]
    finally:
        client.kill()
        client.wait(timeout=30)


def test_right_token_connects(ray_address):
    code = f"import ray; ray.init(address='{ray_address}'); print(int(ray.cluster_resources()['CPU']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("2"), out.stderr[-2000:]
