"""Cooperative long-context attention: part of the KV cache on the accelerator, part on the host.

Each sequence's context is split in two: its oldest ``H_b`` tokens live in a host
(CPU, ideally pinned) paged cache, the newest ``D_b`` tokens (which include the new
queries' own keys, as their K/V is written on the accelerator) in the accelerator's
paged cache. :func:`cooperative_attention` attends over both at once: the accelerator
part is queued asynchronously, the host part runs meanwhile on the CPU through the
CPU implementation of ``paged_attention`` (the native C++ kernels when built), and the
two partial results are merged exactly by :func:`merge_attn_states` through their lse.

With causal attention every query sits after every host key (``Lq_b <= D_b``), so the
host part is plain full attention and the accelerator part is causal over its keys.
On a CPU-only machine the "accelerator" is the CPU too: both parts then run one after
the other, which still exercises the split and the merge.

:func:`plan_kv_placement` decides the split from an accelerator memory budget, and
:func:`offload_prefix` builds the two caches from a single one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _validate as check
from .._dispatch import bound
from .api import merge_attn_states


class PagedKV(NamedTuple):
    """One side of a split cache, in the layout of :func:`paged_attention`:
    k_cache [num_blocks, block_size, Hkv, D], v_cache [num_blocks, block_size, Hkv, Dv],
    block_table int32 [B, max_blocks], seq_lens int32 [B] (keys of each sequence on this side)."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor


def cooperative_attention(q, device_kv: PagedKV, host_kv: PagedKV, cu_seqlens_q, max_seqlen_q, *,
                          softmax_scale=None, causal=True, softcap=0.0, return_lse=False, out=None):
    """Attention of new queries over a context split between accelerator and host memory.

    Args:
        q: [Tq, Hq, D] float16/bfloat16/float32 on the accelerator (or CPU).
        device_kv: :class:`PagedKV` on q's device with the newest ``D_b`` keys of each
            sequence (``device_kv.seq_lens``), the queries' own keys included.
        host_kv: :class:`PagedKV` on the CPU with the oldest ``H_b`` keys
            (``host_kv.seq_lens``; 0 = nothing offloaded). Pinned memory lets the copies
            overlap; any CPU tensor works.
        cu_seqlens_q: int32 [B+1] query offsets on q's device; with ``causal`` each
            sequence's Lq_b <= D_b (its queries are its last positions).
        max_seqlen_q: upper bound of Lq_b.
        softmax_scale, causal, softcap, return_lse, out: as in :func:`paged_attention`
            (no sliding window: a windowed model keeps only its window anyway).

    Returns:
        out [Tq, Hq, Dv] equal to attention over the full context (H_b + D_b keys),
        plus lse float32 [Hq, Tq] when ``return_lse``.
    """
    _check(q, device_kv, host_kv, cu_seqlens_q, max_seqlen_q, causal)
    scale = check.softmax_scale(softmax_scale, q.shape[2])
    softcap = _softcap(softcap)
    out = check.output("out", out, (q.shape[0], q.shape[1], device_kv.v_cache.shape[3]), q)
    on_host = q.device.type == "cpu"
    if not bool(host_kv.seq_lens.any()):   # nothing offloaded (host tensors: no device sync)
        lse = bound("paged_attention", q.device.type).fn(
            q, device_kv.k_cache, device_kv.v_cache, device_kv.block_table, device_kv.seq_lens, cu_seqlens_q,
            max_seqlen_q, softmax_scale=scale, window=(-1, 0) if causal else (-1, -1), softcap=softcap, out=out,
            return_lse=return_lse)
        return (out, lse) if return_lse else out

    # queries to the host first, so the copy is queued ahead of the accelerator kernels
    if on_host:
        q_host, cu_host = q, cu_seqlens_q
    else:
        q_host = torch.empty(q.shape, dtype=q.dtype, pin_memory=True)
        q_host.copy_(q, non_blocking=True)
        cu_host = cu_seqlens_q.to("cpu", non_blocking=True)
        copied = _event(q.device)
        copied.record()

    # accelerator part: queued, runs while the host works
    device_out = torch.empty_like(out)
    device_lse = bound("paged_attention", q.device.type).fn(
        q, device_kv.k_cache, device_kv.v_cache, device_kv.block_table, device_kv.seq_lens, cu_seqlens_q,
        max_seqlen_q, softmax_scale=scale, window=(-1, 0) if causal else (-1, -1), softcap=softcap,
        out=device_out, return_lse=True)

    # host part: every host key precedes every query, so it is full attention
    if not on_host:
        copied.synchronize()
    host_out = torch.empty((q.shape[0], q.shape[1], out.shape[2]), dtype=q.dtype, pin_memory=not on_host)
    host_lse = bound("paged_attention", "cpu").fn(
        q_host, host_kv.k_cache, host_kv.v_cache, host_kv.block_table, host_kv.seq_lens, cu_host, max_seqlen_q,
        softmax_scale=scale, window=(-1, -1), softcap=softcap, out=host_out, return_lse=True)

    merged, lse = merge_attn_states(device_out, device_lse, host_out.to(q.device, non_blocking=True),
                                    host_lse.to(q.device, non_blocking=True))
    out.copy_(merged)
    return (out, lse) if return_lse else out


def plan_kv_placement(seq_lens, q_lens, block_size: int, bytes_per_token: int, device_budget_bytes: int) -> list[int]:
    """Host tokens per sequence so that the accelerator part fits ``device_budget_bytes``.

    The newest tokens stay on the accelerator; the host takes each sequence's oldest
    whole blocks. Every sequence keeps at least the blocks holding its ``q_lens`` new
    tokens on the accelerator; the remaining budget is handed out one block at a time
    round-robin (newest host block first), so sequences share it evenly.

    Args:
        seq_lens, q_lens: per-sequence total keys and new tokens (ints).
        block_size: tokens per cache block; bytes_per_token: K+V bytes of one token
            (all layers and heads the budget covers).
        device_budget_bytes: accelerator memory for these sequences' KV.

    Returns:
        host_tokens[b] (a multiple of block_size, <= seq_lens[b] - q_lens[b]).
    Raises:
        ValueError if even the newest blocks do not fit.
    """
    seq_lens, q_lens = [int(x) for x in seq_lens], [int(x) for x in q_lens]
    if len(seq_lens) != len(q_lens):
        raise ValueError(f"seq_lens and q_lens must have the same length, got {len(seq_lens)} and {len(q_lens)}")
    for name, value in (("block_size", block_size), ("bytes_per_token", bytes_per_token)):
        check.positive_int(name, value)
    check.positive_int("device_budget_bytes", device_budget_bytes, allow_zero=True)
    for b, (length, lq) in enumerate(zip(seq_lens, q_lens)):
        if not 0 <= lq <= length:
            raise ValueError(f"sequence {b}: q_lens must be in [0, seq_len = {length}], got {lq}")
    block_bytes = block_size * bytes_per_token
    budget_blocks = device_budget_bytes // block_bytes
    host = [(length - lq) // block_size * block_size for length, lq in zip(seq_lens, q_lens)]
    used = sum(math.ceil((length - h) / block_size) for length, h in zip(seq_lens, host))
    if used > budget_blocks:
        raise ValueError(f"the newest blocks alone need {used} blocks ({used * block_bytes} bytes) on the "
                         f"accelerator but the budget holds {budget_blocks} ({device_budget_bytes} bytes)")
    moved = True
    while moved and used < budget_blocks:
        moved = False
        for b in range(len(host)):
            if host[b] > 0 and used < budget_blocks:
                host[b] -= block_size
                used += 1
                moved = True
    return host


def offload_prefix(k_cache, v_cache, block_table, seq_lens, host_tokens, *, pin_memory=None
                   ) -> tuple[PagedKV, PagedKV]:
    """Split one paged cache into (accelerator part, host part) for :func:`cooperative_attention`.

    ``host_tokens[b]`` (a multiple of the block size) oldest tokens of sequence b are
    copied to a new compact host cache; the accelerator part reuses the original
    cache with the remaining blocks. ``pin_memory`` defaults to True off the CPU.
    """
    block = k_cache.shape[1]
    host_tokens = [int(h) for h in host_tokens]
    lens = seq_lens.tolist()
    if len(host_tokens) != len(lens):
        raise ValueError(f"host_tokens needs one entry per sequence ({len(lens)}), got {len(host_tokens)}")
    for b, (h, length) in enumerate(zip(host_tokens, lens)):
        if h % block or not 0 <= h <= length:
            raise ValueError(f"host_tokens[{b}] = {h} must be a multiple of the block size {block} in [0, {length}]")
    pin = (k_cache.device.type != "cpu") if pin_memory is None else pin_memory
    table = block_table.cpu().long()
    host_blocks = [table[b, :h // block] for b, h in enumerate(host_tokens)]
    ids = torch.cat(host_blocks) if host_blocks else torch.zeros(0, dtype=torch.long)
    host_k = k_cache[ids.to(k_cache.device)].cpu()
    host_v = v_cache[ids.to(v_cache.device)].cpu()
    if pin:
        host_k, host_v = host_k.pin_memory(), host_v.pin_memory()
    width = max([len(x) for x in host_blocks] + [1])
    host_table = torch.zeros(len(lens), width, dtype=torch.int32)
    cursor = 0
    for b, blocks in enumerate(host_blocks):
        host_table[b, :len(blocks)] = torch.arange(cursor, cursor + len(blocks), dtype=torch.int32)
        cursor += len(blocks)
    skip = [h // block for h in host_tokens]
    dev_width = max([table.shape[1] - s for s in skip] + [1])
    dev_table = torch.zeros(len(lens), dev_width, dtype=torch.int32)
    for b, s in enumerate(skip):
        rest = table[b, s:]
        dev_table[b, :rest.numel()] = rest.int()
    device = PagedKV(k_cache, v_cache, dev_table.to(block_table.device),
                     torch.tensor([length - h for length, h in zip(lens, host_tokens)], dtype=torch.int32,
                                  device=seq_lens.device))
    host = PagedKV(host_k, host_v, host_table, torch.tensor(host_tokens, dtype=torch.int32))
    return device, host


# ----------------------------------------------------------------------- helpers
def _event(device: torch.device):
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "Event"):
        raise TypeError(f"cooperative_attention needs an accelerator with events (cuda, npu), got {device}")
    return module.Event()


def _softcap(value) -> float:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"softcap must be a float >= 0 (0 = off), got {value!r}")
    return float(value)


def _check_side(name: str, kv, device: torch.device, q: torch.Tensor, batch: int) -> None:
    if not isinstance(kv, PagedKV):
        raise TypeError(f"{name} must be a PagedKV(k_cache, v_cache, block_table, seq_lens), got {type(kv).__name__}")
    check.tensor(f"{name}.k_cache", kv.k_cache, ndim=4)
    check.tensor(f"{name}.v_cache", kv.v_cache, ndim=4)
    check.tensor(f"{name}.block_table", kv.block_table, ndim=2, dtypes=(torch.int32,))
    check.tensor(f"{name}.seq_lens", kv.seq_lens, ndim=1, dtypes=(torch.int32,))
    check.same_dtype("q", q, **{f"{name}.k_cache": kv.k_cache, f"{name}.v_cache": kv.v_cache})
    for part in PagedKV._fields:
        tensor = getattr(kv, part)
        if tensor.device != device:
            raise ValueError(f"{name}.{part} must be on {device}, got {tensor.device}")
    check.dim_equals(f"{name}.k_cache", kv.k_cache, 3, q.shape[2], "the head dim of q")
    for dim, what in ((0, "num_blocks"), (1, "block_size"), (2, "KV head count")):
        check.dim_equals(f"{name}.v_cache", kv.v_cache, dim, kv.k_cache.shape[dim], f"the {what} of {name}.k_cache")
    for part in ("k_cache", "v_cache"):
        if getattr(kv, part).stride(3) != 1:
            raise ValueError(f"{name}.{part} must be contiguous in its last (head) dim")
    check.gqa_heads("q", q.shape[1], f"{name}.k_cache", kv.k_cache.shape[2])
    check.dim_equals(f"{name}.seq_lens", kv.seq_lens, 0, batch, "the batch size B of cu_seqlens_q")
    check.dim_equals(f"{name}.block_table", kv.block_table, 0, batch, "the batch size B of cu_seqlens_q")


def _check(q, device_kv, host_kv, cu_seqlens_q, max_seqlen_q, causal) -> None:
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
    if cu_seqlens_q.device != q.device:
        raise ValueError(f"cu_seqlens_q must be on {q.device}, got {cu_seqlens_q.device}")
    batch = check.cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    check.max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q, "cu_seqlens_q")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    _check_side("device_kv", device_kv, q.device, q, batch)
    _check_side("host_kv", host_kv, torch.device("cpu"), q, batch)
    for part, what in ((2, "KV head count"), (3, "head dim")):
        check.dim_equals("host_kv.v_cache", host_kv.v_cache, part, device_kv.v_cache.shape[part],
                         f"the {what} of device_kv.v_cache")
    check.dim_equals("host_kv.k_cache", host_kv.k_cache, 2, device_kv.k_cache.shape[2],
                     "the KV head count of device_kv.k_cache")
    if not check.value_checks_enabled():
        return
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).cpu()
    for name, kv in (("device_kv", device_kv), ("host_kv", host_kv)):
        check.paged_values(kv.block_table, kv.seq_lens, kv.k_cache.shape[0], kv.k_cache.shape[1])
    if causal:
        dev_lens = device_kv.seq_lens.cpu()
        if bool((q_lens > dev_lens).any()):
            b = int((q_lens > dev_lens).nonzero()[0])
            raise ValueError(
                f"sequence {b} has {int(q_lens[b])} queries but only {int(dev_lens[b])} keys on the accelerator; "
                "the newest tokens (the queries' own keys) must stay in device_kv")
