"""Ray's token authentication stays on: a client without the cluster's token is refused."""

import os
import subprocess
import sys


def test_wrong_token_is_refused(ray_address):
    env = {**os.environ, "RAY_AUTH_TOKEN": "0" * 64}
    code = "import ray; ray.init(address='%s'); print('connected')" % ray_address
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and "connected" not in out.stdout


def test_right_token_connects(ray_address):
    code = "import ray; ray.init(address='%s'); print(int(ray.cluster_resources()['CPU']))" % ray_address
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("2"), out.stderr[-2000:]
