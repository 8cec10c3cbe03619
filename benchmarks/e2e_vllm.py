"""End to end: vLLM + ascend_ext against vLLM's own backends, same machine, model, prompts.

Both sides run vLLM's default compilation mode (on CPU: Dynamo trace + Inductor) with
prefix caching off, greedy decoding, ``ignore_eos``. Each run is a fresh process; runs
alternate between the sides (ABAB..., the first side swapped every round) and repeat
``--reps`` times per side. Inside a process, after a warm-up generate, ``--inner``
repetitions time:

* TTFT: ``generate(prompts, max_tokens=1)`` (the whole batch prefilled, first tokens out);
* a full ``generate(prompts, max_tokens=N)``: output tokens/s = batch*N / its time,
  TPOT = median over requests of (last - first token timestamp) / (N - 1) from the engine
  core's request stats (one decode step of the batch, free of prefill variance).

Reported per shape and side: median over processes of each process's median, with the
min..max spread over processes; ratio ours/theirs of the medians (>1 = ascend_ext faster
tokens/s, <1 = faster TTFT/TPOT); per-prompt logprob comparison of the greedy outputs
(first divergence, each side's logprob gap between the two candidate tokens there, and the
largest |logprob difference| of the matching tokens before it).

Noise control (2-core machines gave 0.3 s vs 10 s for the same run before): the engine
runs inside the measuring process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no busy-polling
engine-core/scheduler process competing with the OpenMP threads), OpenMP threads are
pinned (``OMP_NUM_THREADS`` = cores, ``OMP_PROC_BIND=close``, ``OMP_PLACES=cores``,
passive wait after parallel regions), every run's whole process group must have exited
before the next starts, and the load average and other runnable processes are recorded
before each run (``--engine-process`` restores vLLM's multiprocess engine with its own
binding, ``VLLM_CPU_OMP_THREADS_BIND=auto``).

Shapes (``--shapes``): tiny (the demo Llama), mid (Llama 4 layers, hidden 512, 8/2 heads,
1.5k-token prompts), long (the mid model with 8k-token prompts: attention dominates), mla
(tiny DeepSeek-V2: MLA + MoE). bf16 weights.

    python benchmarks/e2e_vllm.py [--shapes tiny,mid,long,mla] [--reps 3] [--inner 3] [--quick] [--profile]

``--profile`` adds one torch.profiler pass per side (first round, after the timings) and
prints self CPU ms per op class (attention, cache write, matmul + experts, other).

Writes e2e_vllm.json and e2e_vllm.png to $OUT (or benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

SIDES = ("ascend_ext", "vllm")
NEAR_TIE_NATS = 0.1   # candidate-token logprob gap below which a bf16 divergence counts as rounding

# name: model builder kwargs, batch, prompt tokens, new tokens, max_model_len
SHAPES = {
    "tiny": dict(model="llama", build=dict(hidden=128, layers=2, heads=4, kv_heads=2), batch=8,
                 prompt=64, new=64, max_len=512),
    "mid": dict(model="llama", build=dict(hidden=512, layers=4, heads=8, kv_heads=2, intermediate=1408),
                batch=8, prompt=1536, new=64, max_len=2048),
    "long": dict(model="llama", build=dict(hidden=512, layers=4, heads=8, kv_heads=2, intermediate=1408,
                                           max_positions=16384), batch=2, prompt=8192, new=32, max_len=8448),
    "mla": dict(model="deepseek", build={}, batch=8, prompt=64, new=64, max_len=512),
}
QUICK = {"prompt": lambda n: min(n, 96), "new": lambda n: min(n, 8), "batch": lambda n: min(n, 2)}


# ------------------------------------------------------------------ worker (one process, one side)
def worker(spec: dict) -> dict:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    llm_kwargs = dict(skip_tokenizer_init=True, dtype="bfloat16", disable_log_stats=False, max_model_len=spec["max_len"],
                      block_size=32, enable_prefix_caching=False, max_num_seqs=max(8, spec["batch"]),
                      max_num_batched_tokens=max(2048, spec["prompt"]), gpu_memory_utilization=0.3)
    t0 = time.perf_counter()
    llm = LLM(model=spec["model_dir"], **llm_kwargs)
    start_s = time.perf_counter() - t0
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]

    def timed(max_tokens: int, logprobs=None):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False,
                                logprobs=logprobs)
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t, outs

    timed(spec["new"])   # warm-up: first-call costs (allocations, lazy compilation) out of the timings
    ttfts, fulls, tpots = [], [], []
    for _ in range(spec["inner"]):
        ttfts.append(timed(1)[0])
        full_s, full_outs = timed(spec["new"])
        fulls.append(full_s)
        tpots.append(decode_step_s(full_outs))
    _, outs = timed(spec["new"], logprobs=5)
    breakdown = profile_breakdown(lambda: timed(spec["new"])) if spec.get("profile") else None
    config = llm.llm_engine.vllm_config
    layers = config.compilation_config.static_forward_context
    ttft, full = statistics.median(ttfts), statistics.median(fulls)
    return {
        "platform": type(current_platform).__name__,
        "attention_backends": sorted({layer.attn_backend.get_name() for layer in layers.values()
                                      if hasattr(layer, "attn_backend")}),
        "compilation_mode": config.compilation_config.mode.name, "torch_threads": torch.get_num_threads(),
        "engine_start_s": start_s, "ttft_s": ttft, "full_s": full, "ttft_all": ttfts, "full_all": fulls,
        "tokens_per_s": spec["batch"] * spec["new"] / full,
        "tpot_s": statistics.median(tpots), "tpot_all": tpots,
        "profile": breakdown,
        "outputs": [{"token_ids": list(o.outputs[0].token_ids),
                     "top": [{str(t): v.logprob for t, v in lp.items()} for lp in o.outputs[0].logprobs]}
                    for o in outs],
    }


PROFILE_CLASSES = (("attention", ("attention", "mla_decode", "attn")), ("cache write", ("reshape_and_cache", "concat_and_cache", "kv_cache_update")),
                   ("matmul + experts", ("mm", "linear", "moe", "expert", "gemm")))


def profile_breakdown(run) -> dict:
    """Self CPU ms per op class over one full generate (torch.profiler): where each side's
    time goes. Ops are classed by name (first matching class); the rest is "other"."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    classes = {name: 0.0 for name, _ in PROFILE_CLASSES} | {"other": 0.0}
    top = []
    for evt in prof.key_averages():
        ms = evt.self_cpu_time_total / 1e3
        low = evt.key.lower()
        cls = next((name for name, words in PROFILE_CLASSES if any(w in low for w in words)
                    and not low.startswith("##")), "other")
        classes[cls] += ms
        top.append((ms, evt.key))
    top.sort(reverse=True)
    return {"ms": classes, "total_ms": sum(classes.values()), "top": [[k, round(ms, 3)] for ms, k in top[:12]]}


def decode_step_s(outs) -> float:
    """Median over requests of (last token time - first token time) / (tokens - 1): the engine
    core's own per-request timestamps, so the prefill's run-to-run variance (seconds at 8k
    prompts) does not leak into the per-token decode time as it does in (full - TTFT) / (N - 1)."""
    steps = [(o.metrics.last_token_ts - o.metrics.first_token_ts) / (len(o.outputs[0].token_ids) - 1)
             for o in outs if o.metrics is not None and len(o.outputs[0].token_ids) > 1]
    if not steps:
        raise RuntimeError("vLLM returned no request timestamps (disable_log_stats must be False)")
    return statistics.median(steps)


# ------------------------------------------------------------------ driver
def machine_state() -> dict:
    """Load average and the other runnable processes right now (noise indicators)."""
    running = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if rest.startswith("R"):
            running.append(f"{pid}:{name}")
    return {"loadavg_1m": os.getloadavg()[0], "other_running": running}


def run_env(engine_process: bool, disable_plugin: bool) -> dict:
    env = dict(os.environ)
    env.pop("ASCEND_EXT_DISABLE", None)
    if disable_plugin:
        env["ASCEND_EXT_DISABLE"] = "1"
    cores = str(len(os.sched_getaffinity(0)))
    env.update({"VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "2"), "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))})
    if engine_process:
        env.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto"})
    else:
        env.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": cores, "OMP_PROC_BIND": "close",
                    "OMP_PLACES": "cores", "OMP_WAIT_POLICY": "PASSIVE"})
    return env


def run_once(spec: dict, side: str, engine_process: bool, timeout: float) -> dict:
    """One side in a fresh process group; returns once every process of the group is gone."""
    with tempfile.TemporaryDirectory(prefix="e2e_vllm_") as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        state = machine_state()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", spec_path, out_path],
                                env=run_env(engine_process, side == "vllm"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            _wait_group_gone(proc.pid)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} run failed (exit code {proc.returncode}):\n{log[-5000:]}")
        with open(out_path) as f:
            result = json.load(f)
        result.update(state)
        return result


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    """Wait until no process of the run's group is left (engine children), then SIGKILL stragglers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    print(f"  processes of group {pgid} still alive after {timeout:.0f} s: killing them", flush=True)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def build_model(name: str, shape: dict, root: str) -> str:
    path = os.path.join(root, name)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if shape["model"] == "llama":
        from ascend_ext.demo import build_tiny_llama
        build_tiny_llama(path, seed=0, dtype="bfloat16", **shape["build"])
    else:
        from tests.integration.models import build_tiny_deepseek_v2
        build_tiny_deepseek_v2(path, seed=0, dtype="bfloat16", **shape["build"])
    return path


def compare_logprobs(ours: list[dict], theirs: list[dict]) -> dict:
    """Per prompt: first divergence step, each side's logprob gap between its own token and
    the other's there (None: not in its top 5), and max |dlogprob| of matching tokens before."""
    prompts, worst_matching = [], 0.0
    for a, b in zip(ours, theirs):
        entry = {"diverged_at": None}
        for step, (ta, tb) in enumerate(zip(a["token_ids"], b["token_ids"])):
            top_a, top_b = a["top"][step], b["top"][step]
            if ta != tb:
                gap_a = top_a[str(ta)] - top_a[str(tb)] if str(tb) in top_a else None
                gap_b = top_b[str(tb)] - top_b[str(ta)] if str(ta) in top_b else None
                near = gap_a is not None and gap_b is not None and max(gap_a, gap_b) < NEAR_TIE_NATS
                entry = {"diverged_at": step, "gap_ours": gap_a, "gap_theirs": gap_b, "near_tie": near}
                break
            worst_matching = max(worst_matching, abs(top_a[str(ta)] - top_b[str(tb)]))
        prompts.append(entry)
    diverged = [p for p in prompts if p["diverged_at"] is not None]
    return {"prompts": prompts, "diverged": len(diverged), "near_ties": sum(p["near_tie"] for p in diverged),
            "max_abs_dlogprob_matching": worst_matching}


def summarize(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="tiny,mid,long,mla")
    ap.add_argument("--reps", type=int, default=3, help="processes per side and shape (alternated)")
    ap.add_argument("--inner", type=int, default=3, help="timed repetitions inside each process")
    ap.add_argument("--quick", action="store_true", help="smoke run: small prompts, few tokens")
    ap.add_argument("--engine-process", action="store_true", help="vLLM's multiprocess engine (default: in-process)")
    ap.add_argument("--models", default=None, help="directory to build/reuse the models in (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--profile", action="store_true",
                    help="also profile one full generate per side in the first round (op classes, top ops)")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        with open(args.worker[0]) as f:
            spec = json.load(f)
        result = worker(spec)
        with open(args.worker[1], "w") as f:
            json.dump(result, f)
        return 0

    import random

    from common import environment, out_dir, print_table, write_json

    model_root = args.models or tempfile.mkdtemp(prefix="e2e_vllm_models_")
    report = {"environment": environment(), "cores": len(os.sched_getaffinity(0)),
              "engine_process": args.engine_process, "reps": args.reps, "inner": args.inner,
              "quick": args.quick, "shapes": {}}
    rows = []
    for name in args.shapes.split(","):
        shape = dict(SHAPES[name])
        if args.quick:
            shape.update({k: f(shape[k]) for k, f in QUICK.items()})
        model_dir = build_model(name, SHAPES[name], model_root)
        rng = random.Random(0)
        prompts = [[rng.randrange(3, 512) for _ in range(shape["prompt"])] for _ in range(shape["batch"])]
        spec = {"model_dir": model_dir, "prompts": prompts, "batch": shape["batch"], "prompt": shape["prompt"],
                "new": shape["new"], "max_len": shape["max_len"], "inner": args.inner}
        profiles = {}
        runs = {side: [] for side in SIDES}
        for rep in range(args.reps):
            for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
                r = run_once(dict(spec, profile=args.profile and rep == 0), side, args.engine_process, args.timeout)
                if r.get("profile"):
                    profiles[side] = r.pop("profile")
                runs[side].append(r)
                print(f"{name:5s} rep {rep} {side:10s} {r['tokens_per_s']:8.1f} tok/s  TTFT {r['ttft_s'] * 1e3:8.1f} ms"
                      f"  TPOT {r['tpot_s'] * 1e3:7.2f} ms  start {r['engine_start_s']:5.1f} s"
                      f"  load {r['loadavg_1m']:.2f}  {r['attention_backends']}", flush=True)
        entry = {"spec": {k: v for k, v in spec.items() if k != "prompts"}, "profile": profiles}
        for side, prof in profiles.items():
            parts = "  ".join(f"{k} {v:.0f}" for k, v in prof["ms"].items())
            print(f"{name:5s} profile {side:10s} total {prof['total_ms']:.0f} ms self CPU: {parts}", flush=True)
        for side in SIDES:
            entry[side] = {k: summarize(runs[side], k) for k in ("tokens_per_s", "ttft_s", "tpot_s", "engine_start_s")}
            entry[side]["attention_backends"] = runs[side][0]["attention_backends"]
            entry[side]["compilation_mode"] = runs[side][0]["compilation_mode"]
            entry[side]["machine_state"] = [{k: r[k] for k in ("loadavg_1m", "other_running")} for r in runs[side]]
        med = {s: {k: entry[s][k]["median"] for k in ("tokens_per_s", "ttft_s", "tpot_s")} for s in SIDES}
        entry["ratio_tokens_per_s"] = med["ascend_ext"]["tokens_per_s"] / med["vllm"]["tokens_per_s"]
        entry["ratio_ttft"] = med["ascend_ext"]["ttft_s"] / med["vllm"]["ttft_s"]
        entry["ratio_tpot"] = med["ascend_ext"]["tpot_s"] / med["vllm"]["tpot_s"]
        entry["logprobs"] = compare_logprobs(runs["ascend_ext"][0]["outputs"], runs["vllm"][0]["outputs"])
        report["shapes"][name] = entry
        lp = entry["logprobs"]
        spread = lambda s, k, f=1.0: f"{entry[s][k]['min'] * f:.3g}..{entry[s][k]['max'] * f:.3g}"  # noqa: E731
        rows.append({"shape": name, "prompt x batch": f"{shape['prompt']}x{shape['batch']}",
                     "ours tok/s": med["ascend_ext"]["tokens_per_s"], "(spread)": spread("ascend_ext", "tokens_per_s"),
                     "vLLM tok/s": med["vllm"]["tokens_per_s"], "(spread) ": spread("vllm", "tokens_per_s"),
                     "x tok/s": entry["ratio_tokens_per_s"],
                     "TTFT ms ours/vLLM": f"{med['ascend_ext']['ttft_s'] * 1e3:.3g}/{med['vllm']['ttft_s'] * 1e3:.3g}",
                     "TPOT ms ours/vLLM": f"{med['ascend_ext']['tpot_s'] * 1e3:.3g}/{med['vllm']['tpot_s'] * 1e3:.3g}",
                     "diverged (near-tie)": f"{lp['diverged']}/{shape['batch']} ({lp['near_ties']})",
                     "max dlogprob": lp["max_abs_dlogprob_matching"]})
        write_json("e2e_vllm.json", report)   # after every shape: a cut-off run keeps what it measured
    print_table(f"vLLM + ascend_ext vs vLLM's own backends ({report['cores']} cores, default compilation mode, "
                f"median of {args.reps} processes x {args.inner} inner)", rows, list(rows[0]))
    print(f"load average now: {os.getloadavg()}")
    print(f"wrote {write_json('e2e_vllm.json', report)}")
    _plot(report, os.path.join(out_dir(), "e2e_vllm.png"))
    return 0


def _plot(report: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    names = list(report["shapes"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in zip(axes, ("tokens_per_s", "ttft_s", "tpot_s"), ("output tokens/s", "TTFT s", "TPOT s")):
        for i, side in enumerate(SIDES):
            stats = [report["shapes"][n][side][key] for n in names]
            med = [s["median"] for s in stats]
            err = [[m - s["min"] for m, s in zip(med, stats)], [s["max"] - m for m, s in zip(med, stats)]]
            ax.bar([x + 0.4 * i for x in range(len(names))], med, 0.4, yerr=err, capsize=3,
                   label="vLLM + ascend_ext" if side == "ascend_ext" else "vLLM's own backends")
        ax.set_xticks([x + 0.2 for x in range(len(names))], names)
        ax.set_yscale("log")
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle("vLLM end to end on CPU (median, min..max over processes)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
