"""Expert-parallel dispatch / combine over any torch.distributed process group.

Rank r of R owns experts [r*E/R, (r+1)*E/R). Protocol of :func:`ep_dispatch`:

1. header (all_gather): every rank's hidden size, top-k, expert count, dtype, mode
   and local input verdict — a mismatch or a bad input anywhere makes *every* rank
   raise the same error instead of leaving peers waiting;
2. counts (all_to_all): per destination rank, the number of tokens and the number of
   (token, expert) assignments per local expert;
3. payload (all_to_all): each token once per destination rank (not once per expert):
   its hidden vector (or INT8 values + a per-token scale) and its routing row
   (expert ids and weights packed into one int32 tensor);
4. the receiver expands the rows it got into (token, local expert) assignments
   grouped by local expert: ``recv_x[expert_offsets[e]:expert_offsets[e] +
   tokens_per_expert[e]]`` are expert e's inputs.

:func:`ep_combine` reverses it: the receiver sums each token's local expert outputs
weighted by the routing weights (float32), sends one vector per (token, rank) back,
and the origin adds the ranks' partial sums in the original token order.

Dynamic mode sizes the payload exactly (the host reads the counts). Fixed-capacity
mode (``max_tokens_per_rank = C``) has static shapes and no host reads, for graph
capture: each rank sends exactly C rows to each peer; tokens beyond C for a peer are
dropped and counted in ``num_dropped`` (check it, or call ``raise_on_overflow``).
Every collective waits at most ``timeout_s`` and raises :class:`CollectiveTimeoutError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import _comm as comm
from .quant import dequantize, quantize_per_token

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_HEADER_FIELDS = ("input check", "hidden size", "top_k", "num_experts", "dtype", "quant", "max_tokens_per_rank")


@dataclass
class EPHandle:
    """What :func:`ep_combine` needs to send results back (opaque to callers); one
    subclass per implementation adds its routing tensors (and ``capacity``). ``impl``
    names the ep_combine implementation that must consume it (None: the one selected
    for the device)."""

    impl: ClassVar[str | None] = None
    group: object
    world: int
    num_tokens: int
    hidden: int
    dtype: torch.dtype
    timeout_s: float

    def grouped_rows(self) -> int:
        """Rows of the ``expert_out`` that ep_combine expects (the dispatched rows)."""
        raise NotImplementedError


@dataclass
class ReferenceHandle(EPHandle):
    """Handle of the reference implementation (below)."""

    rows: torch.Tensor              # [N] received row of each grouped assignment (dummy row = num_recv)
    weights: torch.Tensor           # [N] float32 routing weight of each grouped assignment
    num_recv: int                   # rows received (dynamic) or world * capacity
    send_tokens: torch.Tensor | None = None   # dynamic: [S] original token of each sent row
    send_splits: list[int] | None = None
    recv_splits: list[int] | None = None
    slots: torch.Tensor | None = None         # capacity: [T, R] send row per (token, rank), dummy = R*C
    capacity: int | None = None

    def grouped_rows(self) -> int:
        return self.rows.shape[0]


@dataclass
class DispatchResult:
    recv_x: torch.Tensor             # [N, H] grouped by local expert; int8 when quant="int8"
    recv_scales: torch.Tensor | None  # [N] float32 per-row scales (int8 only)
    tokens_per_expert: torch.Tensor  # [E_local] int64
    expert_offsets: torch.Tensor     # [E_local + 1] int64 first row of each expert's group
    num_dropped: torch.Tensor        # [] int64, (token, rank) pairs dropped by capacity mode
    handle: EPHandle

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """recv_x in float (the dispatching ranks' dtype unless given)."""
        dtype = dtype or self.handle.dtype
        return self.recv_x if self.recv_scales is None else dequantize(self.recv_x, self.recv_scales, dtype)

    def raise_on_overflow(self) -> None:
        dropped = int(self.num_dropped)
        if dropped:
            raise RuntimeError(f"ep_dispatch: {dropped} (token, rank) sends exceeded max_tokens_per_rank="
                               f"{self.handle.capacity} and were dropped")


def _local_input_problem(x, topk_ids, topk_weights, num_experts, world) -> str | None:
    if num_experts % world:
        return f"num_experts ({num_experts}) must be divisible by the group size ({world})"
    if topk_ids.numel():
        low, high = int(topk_ids.min()), int(topk_ids.max())
        if low < -1 or high >= num_experts:
            return f"topk_ids must lie in [-1, {num_experts}) (-1 = masked slot), got values in [{low}, {high}]"
    return None


def _exchange_header(x, topk_ids, num_experts, quant, capacity, problem, group, timeout_s) -> None:
    header = torch.tensor([0 if problem is None else 1, x.shape[1], topk_ids.shape[1], num_experts,
                           _DTYPE_CODES[x.dtype], 0 if quant is None else 1, capacity or 0],
                          dtype=torch.int64, device=x.device)
    headers = comm.all_gather(header, group, "ep_dispatch header", timeout_s).cpu()
    _, rank = comm.world_of(group)
    if problem is not None:
        raise ValueError(f"ep_dispatch on rank {rank}: {problem}")
    bad = (headers[:, 0] != 0).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"ep_dispatch: rank(s) {bad} rejected their inputs (see their error); aborting on all ranks")
    for field in range(1, len(_HEADER_FIELDS)):
        values = headers[:, field].tolist()
        if len(set(values)) > 1:
            raise ValueError(f"ep_dispatch: ranks disagree on {_HEADER_FIELDS[field]}: {values} (rank i at index i)")


def _routing_payload(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """[rows, 2k] int32: expert ids, then the float32 weights' bit patterns."""
    return torch.cat([topk_ids.to(torch.int32), topk_weights.float().contiguous().view(torch.int32)], dim=1)


def _split_routing(meta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return meta[:, :k].long(), meta[:, k:].contiguous().view(torch.float32)


def dispatch(x, topk_ids, topk_weights, num_experts, group=None, *, quant=None, max_tokens_per_rank=None,
             timeout_s=None, check_values=True):
    """Reference implementation (any backend of torch.distributed). Inputs are validated by the caller."""
    timeout_s = comm.default_timeout_s() if timeout_s is None else timeout_s
    world, rank = comm.world_of(group)
    problem = _local_input_problem(x, topk_ids, topk_weights, num_experts, world) if check_values else (
        None if num_experts % world == 0 else f"num_experts ({num_experts}) must be divisible by the group size ({world})")
    _exchange_header(x, topk_ids, num_experts, quant, max_tokens_per_rank, problem, group, timeout_s)
    local = num_experts // world
    tokens, hidden = x.shape
    k = topk_ids.shape[1]
    ids = topk_ids.long()
    dest = torch.where(ids >= 0, ids // local, world)                                       # [T, k], world = masked
    to_rank = torch.zeros(tokens, world + 1, dtype=torch.bool, device=x.device).scatter_(1, dest, True)[:, :world]
    if max_tokens_per_rank is None:
        return _dispatch_dynamic(x, ids, topk_weights, to_rank, local, world, rank, quant, group, timeout_s)
    return _dispatch_capacity(x, ids, topk_weights, to_rank, local, world, rank, quant, max_tokens_per_rank,
                              group, timeout_s)


def _expand(recv_ids, recv_w, rank, local):
    """(row, slot) assignments to this rank's experts, grouped by local expert (stable in row order)."""
    mine = (recv_ids >= rank * local) & (recv_ids < (rank + 1) * local)
    rows, slot = mine.nonzero(as_tuple=True)
    expert = recv_ids[rows, slot] - rank * local
    order = torch.sort(expert, stable=True).indices
    return rows[order], recv_w[rows, slot][order], expert[order]


def _dispatch_dynamic(x, ids, topk_weights, to_rank, local, world, rank, quant, group, timeout_s):
    tokens, hidden = x.shape
    k = ids.shape[1]
    pairs = to_rank.T.nonzero()                       # (rank, token), by rank then token
    send_tokens = pairs[:, 1]
    valid = ids >= 0
    expert_counts = torch.bincount(ids[valid], minlength=world * local).view(world, local)
    counts = torch.cat([to_rank.sum(0, dtype=torch.int64)[:, None], expert_counts], dim=1)
    recv_counts = torch.empty_like(counts)
    comm.all_to_all(recv_counts, counts, group, "ep_dispatch counts", timeout_s)
    send_splits = counts[:, 0].tolist()
    recv_splits = recv_counts[:, 0].tolist()
    num_recv = sum(recv_splits)

    send_x = x[send_tokens]
    scales = None
    if quant == "int8":
        send_x, send_scales = quantize_per_token(send_x)
        scales = send_scales.new_empty(num_recv)
        comm.all_to_all(scales, send_scales, group, "ep_dispatch scales", timeout_s, recv_splits, send_splits)
    recv_x = send_x.new_empty((num_recv, hidden))
    comm.all_to_all(recv_x, send_x, group, "ep_dispatch payload", timeout_s, recv_splits, send_splits)
    meta = _routing_payload(ids[send_tokens], topk_weights[send_tokens])
    recv_meta = meta.new_empty((num_recv, 2 * k))
    comm.all_to_all(recv_meta, meta, group, "ep_dispatch routing", timeout_s, recv_splits, send_splits)

    rows, weights, expert = _expand(*_split_routing(recv_meta, k), rank, local)
    tokens_per_expert = torch.bincount(expert, minlength=local)
    offsets = torch.zeros(local + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.cumsum(tokens_per_expert, 0)
    handle = ReferenceHandle(group, world, tokens, hidden, x.dtype, timeout_s, rows, weights, num_recv,
                      send_tokens=send_tokens, send_splits=send_splits, recv_splits=recv_splits)
    return DispatchResult(recv_x[rows], None if scales is None else scales[rows], tokens_per_expert, offsets,
                          torch.zeros((), dtype=torch.int64, device=x.device), handle)


def _dispatch_capacity(x, ids, topk_weights, to_rank, local, world, rank, quant, capacity, group, timeout_s):
    tokens, hidden = x.shape
    k = ids.shape[1]
    rows_out = world * capacity                         # static receive size
    position = torch.cumsum(to_rank.to(torch.int64), dim=0) - 1          # [T, R] place in the rank's list
    kept = to_rank & (position < capacity)
    num_dropped = (to_rank & ~kept).sum()
    base = torch.arange(world, device=x.device) * capacity
    slots = torch.where(kept, base + position, rows_out)                 # [T, R]; rows_out = dummy row
    send_x = x.new_zeros((rows_out + 1, hidden))
    meta = torch.zeros((rows_out + 1, 2 * k), dtype=torch.int32, device=x.device)
    meta[:, :k] = -1                                                     # empty rows route nowhere
    payload = _routing_payload(ids, topk_weights)
    for r in range(world):
        send_x[slots[:, r]] = x
        meta[slots[:, r]] = payload
    send_x, meta = send_x[:rows_out], meta[:rows_out]
    scales = None
    if quant == "int8":
        send_x, send_scales = quantize_per_token(send_x)
        scales = torch.empty_like(send_scales)
        comm.all_to_all(scales, send_scales, group, "ep_dispatch scales", timeout_s)
    recv_x = torch.empty_like(send_x)
    comm.all_to_all(recv_x, send_x, group, "ep_dispatch payload", timeout_s)
    recv_meta = torch.empty_like(meta)
    comm.all_to_all(recv_meta, meta, group, "ep_dispatch routing", timeout_s)

    # every received row may go to each local expert once: experts get fixed slabs of rows_out rows
    recv_ids, recv_w = _split_routing(recv_meta, k)
    mine = (recv_ids >= rank * local) & (recv_ids < (rank + 1) * local)
    expert = torch.where(mine, recv_ids - rank * local, local)                             # [rows_out, k]
    one_hot = torch.nn.functional.one_hot(expert.flatten(), local + 1)[:, :local]
    place = (torch.cumsum(one_hot, dim=0) - 1).gather(1, expert.flatten().clamp(max=local - 1)[:, None]).view_as(expert)
    grouped = torch.where(mine, expert * rows_out + place, local * rows_out)               # dummy = local*rows_out
    total = local * rows_out
    recv_grouped = recv_x.new_zeros((total + 1, hidden))
    row_of = torch.full((total + 1,), rows_out, dtype=torch.int64, device=x.device)
    weight_of = torch.zeros(total + 1, dtype=torch.float32, device=x.device)
    scale_of = None if scales is None else torch.ones(total + 1, dtype=torch.float32, device=x.device)
    row_index = torch.arange(rows_out, device=x.device)
    for s in range(k):
        recv_grouped[grouped[:, s]] = recv_x
        row_of[grouped[:, s]] = row_index
        weight_of[grouped[:, s]] = recv_w[:, s]
        if scale_of is not None:
            scale_of[grouped[:, s]] = scales
    row_of[total] = rows_out
    tokens_per_expert = one_hot.sum(0)
    offsets = torch.arange(local + 1, device=x.device, dtype=torch.int64) * rows_out
    handle = ReferenceHandle(group, world, tokens, hidden, x.dtype, timeout_s, row_of[:total], weight_of[:total],
                      rows_out, slots=slots, capacity=capacity)
    return DispatchResult(recv_grouped[:total], None if scale_of is None else scale_of[:total], tokens_per_expert,
                          offsets, num_dropped, handle)


def combine(expert_out: torch.Tensor, handle: ReferenceHandle) -> torch.Tensor:
    """Reference implementation of :func:`ascend_ext.ops.ep_combine` (validated args)."""
    h = handle
    # receiver: weighted sum of each received row's local expert outputs (float32);
    # rows outside any expert (capacity padding) land in the dummy row num_recv
    partial = torch.zeros((h.num_recv + 1, h.hidden), dtype=torch.float32, device=expert_out.device)
    partial.index_add_(0, h.rows, expert_out.float() * h.weights[:, None])
    send_back = partial[:h.num_recv].to(h.dtype)
    if h.capacity is None:
        back = send_back.new_empty((len(h.send_tokens), h.hidden))
        comm.all_to_all(back, send_back, h.group, "ep_combine payload", h.timeout_s, h.send_splits, h.recv_splits)
        out = torch.zeros((h.num_tokens, h.hidden), dtype=torch.float32, device=expert_out.device)
        out.index_add_(0, h.send_tokens, back.float())
        return out.to(h.dtype)
    back = torch.empty_like(send_back)
    comm.all_to_all(back, send_back, h.group, "ep_combine payload", h.timeout_s)
    back = torch.cat([back.float(), back.new_zeros((1, h.hidden), dtype=torch.float32)])
    out = back[h.slots].sum(dim=1)                                                        # [T, R, H] -> [T, H]
    return out.to(h.dtype)
