"""Expert-parallel scenarios: per-rank workers and the single-process float64 reference.

Inputs are generated from (seed, rank) so the parent can rebuild every rank's data.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.nn.functional as F

from ascend_ext import ops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def rank_inputs(case: dict, rank: int):
    g = torch.Generator().manual_seed(case["seed"] * 1000 + rank)
    t, h, e, k = case["tokens"][rank], case["hidden"], case["experts"], case["top_k"]
    x = torch.randn(t, h, generator=g).to(DTYPES[case["dtype"]])
    logits = torch.randn(t, e, generator=g)
    if case.get("routing") == "skewed":       # everyone wants the last experts
        logits[:, -k:] += 50.0
    weights, ids = ops.moe_route(logits, k, renormalize=case.get("renormalize", True))
    if case.get("routing") == "masked":
        ids[::3, 0] = -1                      # masked slots
        if t:
            ids[0, :] = -1                    # a token routed nowhere
    return x, ids, weights


def expert_weights(case: dict):
    g = torch.Generator().manual_seed(case["seed"] + 7)
    e, h, i = case["experts"], case["hidden"], case["inter"]
    w13 = (torch.randn(e, 2 * i, h, generator=g) * h ** -0.5).to(DTYPES[case["dtype"]])
    w2 = (torch.randn(e, h, i, generator=g) * i ** -0.5).to(DTYPES[case["dtype"]])
    return w13, w2


def run_case(rank: int, world: int, case: dict) -> dict:
    x, ids, weights = rank_inputs(case, rank)
    impl = case.get("impl", "reference")
    trusted = ops.trusted_inputs() if case.get("trusted") else contextlib.nullcontext()
    with ops.use_impl(ep_dispatch=impl, ep_combine=impl), trusted:
        res = ops.ep_dispatch(x, ids, weights, case["experts"], quant=case.get("quant"),
                              max_tokens_per_rank=case.get("capacity"), timeout_s=case.get("timeout_s", 60))
        local = case["experts"] // world
        if case["mode"] == "layer":
            w13, w2 = expert_weights(case)
            y = ops.moe_experts(res.recv_x, w13[rank * local:(rank + 1) * local],
                                w2[rank * local:(rank + 1) * local], res.expert_offsets, res.tokens_per_expert,
                                scales=res.recv_scales, out_dtype=x.dtype)
        else:   # identity experts
            y = res.dequantized()
        out = ops.ep_combine(y, res.handle)
    return {"out": out, "tokens_per_expert": res.tokens_per_expert.clone(), "num_dropped": int(res.num_dropped)}


def worker(rank: int, world: int, cases: list[dict]) -> list[dict]:
    return [run_case(rank, world, case) for case in cases]


# ------------------------------------------------------------------ reference
def reference(case: dict, world: int) -> dict:
    """float64 outputs per rank, tokens per expert per rank, dropped (token, rank) pairs."""
    e, k = case["experts"], case["top_k"]
    local = e // world
    w13, w2 = expert_weights(case)
    inputs = [rank_inputs(case, r) for r in range(world)]
    capacity = case.get("capacity")
    kept = []           # per source rank: bool [T, world], token reaches rank r
    dropped = 0
    for x, ids, _ in inputs:
        need = torch.zeros(x.shape[0], world, dtype=torch.bool)
        for t in range(x.shape[0]):
            for eid in ids[t].tolist():
                if eid >= 0:
                    need[t, eid // local] = True
        if capacity is not None:
            order = torch.cumsum(need.long(), 0) - 1
            keep = need & (order < capacity)
            dropped += int((need & ~keep).sum())
            need = keep
        kept.append(need)
    outs, tpe = [], torch.zeros(world, local, dtype=torch.int64)
    for src, (x, ids, w) in enumerate(inputs):
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
        for t in range(x.shape[0]):
            for eid, wt in zip(ids[t].tolist(), w[t].tolist()):
                if eid < 0 or not kept[src][t, eid // local]:
                    continue
                tpe[eid // local, eid % local] += 1
                xt = x[t].double()
                if case["mode"] == "layer":
                    gu = w13[eid].double() @ xt
                    inter = w2.shape[2]
                    y = w2[eid].double() @ (F.silu(gu[:inter]) * gu[inter:])
                else:
                    y = xt
                out[t] += wt * y
        outs.append(out)
    return {"out": outs, "tokens_per_expert": tpe, "dropped": dropped}


# ------------------------------------------------------------------ failure scenarios
def bad_ids_on_rank1(rank: int, world: int, payload) -> str:
    x = torch.randn(4, 8)
    ids = torch.zeros(4, 2, dtype=torch.int32)
    ids[:, 1] = 1
    if rank == 1:
        ids[2, 1] = 99                                   # out of range
    try:
        with ops.use_impl(ep_dispatch=payload or "reference"):
            ops.ep_dispatch(x, ids, torch.ones(4, 2), 8, timeout_s=20)
    except ValueError as exc:
        return str(exc)
    return "no error"


def mismatched_hidden(rank: int, world: int, payload) -> str:
    x = torch.randn(3, 16 if rank == 0 else 32)
    ids = torch.zeros(3, 1, dtype=torch.int32)
    try:
        with ops.use_impl(ep_dispatch=payload or "reference"):
            ops.ep_dispatch(x, ids, torch.ones(3, 1), 4, timeout_s=20)
    except ValueError as exc:
        return str(exc)
    return "no error"


def indivisible_experts(rank: int, world: int, payload) -> str:
    try:
        with ops.use_impl(ep_dispatch=payload or "reference"):
            ops.ep_dispatch(torch.randn(2, 8), torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 1), 3,
                            timeout_s=20)
    except ValueError as exc:
        return str(exc)
    return "no error"


def silent_rank(rank: int, world: int, payload) -> str:
    """Rank 1 never calls (or dies); the others must raise CollectiveTimeoutError in time."""
    if rank == 1:
        if payload == "die":
            os._exit(3)
        time.sleep(8)
        return "slept"
    start = time.monotonic()
    try:
        ops.ep_dispatch(torch.randn(2, 8), torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 1), 2, timeout_s=2)
    except ops.CollectiveTimeoutError as exc:
        return f"timeout after {time.monotonic() - start:.1f}s: {exc}"
    return "no error"


for _fn in (bad_ids_on_rank1, mismatched_hidden, indivisible_experts, silent_rank):
    _fn.no_barrier = True
