"""Run code in a fresh Python that must not import dkdm: what a user with plain diffusers would do."""

import os
import subprocess
import sys



def run_plain(code: str, cwd) -> str:
    """stdout of `code` run offline, without the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
                       cwd=str(cwd), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
