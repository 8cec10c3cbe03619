"""Run a function on N gloo ranks in fresh processes, with a deadline.

``run_ranks(target, world, payload)`` spawns ``world`` processes; each initialises a
gloo process group over a private file store, calls ``target(rank, world, payload)``
(a module-level function, importable by the children) and sends back its result or
its exception text. A rank that neither returns nor raises before ``timeout_s`` is
killed and reported, so a hang can never stall the test suite.
"""

from __future__ import annotations

import datetime
import importlib
import multiprocessing as mp
import os
import pickle
import queue
import tempfile
import traceback


def _child(module: str, name: str, rank: int, world: int, store: str, payload, results) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        target = getattr(importlib.import_module(module), name)
        value = target(rank, world, payload)
        # by value: a tensor shared by file descriptor dies with this process, which may
        # exit before the parent has unpickled it
        results.put((rank, "ok", pickle.dumps(value)))
        if not getattr(target, "no_barrier", False):   # failure scenarios leave peers behind
            dist.barrier()
            dist.destroy_process_group()
    except BaseException as exc:  # report every failure, including timeouts
        results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_ranks(target, world: int, payload=None, timeout_s: float = 120.0) -> dict[int, tuple[str, object]]:
    """{rank: ("ok", value) | ("error", text) | ("timeout", None)}."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_child, args=(target.__module__, target.__name__, r, world, store, payload,
                                                  results), daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        out: dict[int, tuple[str, object]] = {}
        deadline = timeout_s
        import time
        start = time.monotonic()
        while len(out) < world and time.monotonic() - start < deadline:
            try:
                rank, status, value = results.get(timeout=0.5)
                out[rank] = (status, pickle.loads(value) if status == "ok" else value)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        for r in range(world):
            out.setdefault(r, ("timeout", None))
        return out


def values(results: dict, expect_ok: bool = True) -> list:
    if expect_ok:
        bad = {r: v for r, v in results.items() if v[0] != "ok"}
        assert not bad, "\n".join(f"rank {r}: {s}: {t}" for r, (s, t) in bad.items())
    return [results[r][1] for r in sorted(results)]
