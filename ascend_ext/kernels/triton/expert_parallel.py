"""Expert-parallel dispatch / combine on the fused Triton kernels of :mod:`.ep_layout`.

Same contract as the reference (:mod:`.ep`), different protocol and cost:

* **group of one** (EP size 1, or no process group at all): no collectives. One
  layout (stable counting sort of the (token, slot) entries by expert) and one pack
  that copies each token to its k expert rows (INT8-quantised on the way if asked);
  combine is one weighted gather. ``recv_x`` has the static size T*k; rows past
  ``expert_offsets[-1]`` (masked slots) are padding that no one reads. No host sync.
* **fixed capacity** (``max_tokens_per_rank = C``): a layout by destination rank
  (one send row per (token, rank), stable in token order, the first C per peer kept,
  the rest counted on the device in ``num_dropped``) packs every send row — hidden
  vector or INT8 values + scale, and the routing row (k ids, k weights) — into one
  byte buffer of R*C fixed slots, exchanged by ONE all_to_all. The receiver lays the
  rows out by local expert (R*C*min(k, E/R) rows, padding at the end). Combine: one
  weighted gather per received row, one all_to_all back, one gather-sum per token.
  Nothing reads the host, so the whole path can be captured in a CUDA graph.
* **dynamic**: as fixed capacity, but the send rows are packed per peer exactly and
  their sizes travel in ONE small all_to_all (with the validation header of every
  rank), read by the host once — the only host sync of the path.

Validation: with value checks on (the default, and never while a CUDA graph is being
captured) the ranks exchange a header (sizes, dtype, mode, their topk_ids range) so
that a bad input or a disagreement anywhere makes every rank raise the same error;
the dynamic mode always carries it in its size exchange. Under
:func:`ascend_ext.ops.trusted_inputs`, fixed capacity exchanges nothing but payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist

from ...ops import _comm as comm
from ...ops.moe.ep import DispatchResult, EPHandle
from .ep_layout import gather_reduce, layout, scatter_rows

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_FIELDS = ("input check", "hidden size", "top_k", "num_experts", "dtype", "quant", "max_tokens_per_rank")
_ID_MIN, _ID_MAX, _ROWS, _ENTRIES = len(_FIELDS), len(_FIELDS) + 1, len(_FIELDS) + 2, len(_FIELDS) + 3

# benchmarks set this to time the collective protocol on a group of one (one GPU)
FORCE_COLLECTIVES = False


@dataclass
class FusedHandle(EPHandle):
    """Plain tensors + static sizes (a custom-op wrapper can pass them through as is)."""

    impl: ClassVar[str] = "triton"
    num_grouped: int                         # rows of recv_x / expert_out
    recv_pos: torch.Tensor                   # [M, k] int32 grouped row of each (received row, slot), -1 none
    recv_weights: torch.Tensor               # [M, k] float32 routing weights of the received rows
    send_pos: torch.Tensor | None = None     # [T, k] int32 send row of each (token, first slot per rank)
    send_splits: list[int] | None = None     # dynamic: rows per peer
    recv_splits: list[int] | None = None
    capacity: int | None = None

    def grouped_rows(self) -> int:
        return self.num_grouped


def world_and_rank(group) -> tuple[int, int]:
    """(1, 0) without torch.distributed: a group of one needs no process group."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return comm.world_of(group)


def _graph_capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


# ------------------------------------------------------------------ validation
def _id_range_problem(low: int, high: int, num_experts: int) -> str | None:
    if low < -1 or high >= num_experts:
        return f"topk_ids must lie in [-1, {num_experts}) (-1 = masked slot), got values in [{low}, {high}]"
    return None


def _header(x, topk_ids, num_experts, quant, capacity, indivisible, checks) -> torch.Tensor:
    """[len(_FIELDS) + 2] int64 on the device: the static fields, then min/max of topk_ids."""
    static = torch.tensor([int(indivisible), x.shape[1], topk_ids.shape[1], num_experts, _DTYPE_CODES[x.dtype],
                           0 if quant is None else 1, capacity or 0], dtype=torch.int64, device=x.device)
    if checks and topk_ids.numel():
        span = torch.stack([topk_ids.min(), topk_ids.max()]).to(torch.int64)
    else:
        span = torch.zeros(2, dtype=torch.int64, device=x.device)
    return torch.cat([static, span])


def _raise_on_bad_headers(headers: torch.Tensor, rank: int, num_experts: int, world: int, checks: bool) -> None:
    """headers [R, F] (host): row r as rank r sent it. Every rank raises the same way."""
    def problem_of(row) -> str | None:
        if row[0]:
            return f"num_experts ({int(row[3])}) must be divisible by the group size ({world})"
        if checks and row[3] > 0:
            return _id_range_problem(int(row[_ID_MIN]), int(row[_ID_MAX]), int(row[3]))
        return None

    mine = problem_of(headers[rank])
    if mine is not None:
        raise ValueError(f"ep_dispatch on rank {rank}: {mine}")
    bad = [r for r in range(world) if problem_of(headers[r]) is not None]
    if bad:
        raise ValueError(f"ep_dispatch: rank(s) {bad} rejected their inputs (see their error); aborting on all ranks")
    for field in range(1, len(_FIELDS)):
        values = headers[:, field].tolist()
        if len(set(values)) > 1:
            raise ValueError(f"ep_dispatch: ranks disagree on {_FIELDS[field]}: {values} (rank i at index i)")


# ------------------------------------------------------------------ the packed send row
@dataclass(frozen=True)
class _RowFormat:
    """Byte layout of one send row: payload (H values), [int8 scale], k ids, k weights."""

    hidden: int
    k: int
    payload_dtype: torch.dtype

    @property
    def scaled(self) -> bool:
        return self.payload_dtype == torch.int8

    @property
    def scale_at(self) -> int:
        return _round_up(self.hidden * self.payload_dtype.itemsize, 4)

    @property
    def ids_at(self) -> int:
        return self.scale_at + (4 if self.scaled else 0)

    @property
    def width(self) -> int:
        return _round_up(self.ids_at + 8 * self.k, 16)

    def views(self, buf: torch.Tensor):
        """(payload [S, H], scales [S] or None, ids [S, k] int32, weights [S, k] float32) of buf [S, width] uint8."""
        payload = buf[:, :self.hidden * self.payload_dtype.itemsize].view(self.payload_dtype)
        scales = buf[:, self.scale_at:self.scale_at + 4].view(torch.float32)[:, 0] if self.scaled else None
        ids = buf[:, self.ids_at:self.ids_at + 4 * self.k].view(torch.int32)
        weights = buf[:, self.ids_at + 4 * self.k:self.ids_at + 8 * self.k].view(torch.float32)
        return payload, scales, ids, weights


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# ------------------------------------------------------------------ dispatch
def ep_dispatch(x, topk_ids, topk_weights, num_experts, group=None, *, quant=None, max_tokens_per_rank=None,
                timeout_s=None, check_values=True):
    """Fused implementation of :func:`ascend_ext.ops.ep_dispatch` (arguments validated by the caller)."""
    timeout_s = comm.default_timeout_s() if timeout_s is None else timeout_s
    world, rank = world_and_rank(group)
    checks = check_values and not _graph_capturing(x)
    if world == 1 and not (FORCE_COLLECTIVES and group is not None):
        if checks and topk_ids.numel():
            problem = _id_range_problem(int(topk_ids.min()), int(topk_ids.max()), num_experts)
            if problem is not None:
                raise ValueError(f"ep_dispatch on rank 0: {problem}")
        return _dispatch_local(x, topk_ids, topk_weights, num_experts, quant, max_tokens_per_rank, group, timeout_s)

    tokens, hidden = x.shape
    k = topk_ids.shape[1]
    topk_ids, topk_weights = topk_ids.contiguous(), topk_weights.contiguous()
    indivisible = num_experts % world != 0
    local = max(1, num_experts // world)
    capacity = max_tokens_per_rank
    send = layout(topk_ids, world, width=local, dedup=True, capacity=capacity)
    send_splits = recv_splits = None
    if capacity is None or checks or indivisible:
        entries = _entries_per_rank(topk_ids, local, world) if capacity is None else send.counts
        row = _header(x, topk_ids, num_experts, quant, capacity, indivisible, checks)
        mine = torch.cat([row.expand(world, -1), send.counts[:, None], entries[:, None]], dim=1)
        theirs = torch.empty_like(mine)
        comm.all_to_all(theirs, mine, group, "ep_dispatch sizes", timeout_s)
        host = torch.stack([mine, theirs]).cpu()            # the one host read of the path
        _raise_on_bad_headers(host[1], rank, num_experts, world, checks)
        send_splits, recv_splits = host[0][:, _ROWS].tolist(), host[1][:, _ROWS].tolist()
        recv_entries = int(host[1][:, _ENTRIES].sum())
    fmt = _RowFormat(hidden, k, torch.int8 if quant == "int8" else x.dtype)
    if capacity is None:
        send_rows, recv_rows, grouped_rows = sum(send_splits), sum(recv_splits), recv_entries
    else:
        send_rows = recv_rows = world * capacity
        grouped_rows = recv_rows * min(k, local)
        send_splits = recv_splits = None

    send_buf = torch.empty((send_rows, fmt.width), dtype=torch.uint8, device=x.device)
    s_payload, s_scales, s_ids, s_weights = fmt.views(send_buf)
    if capacity is not None:
        s_ids.fill_(-1)                                       # slots no token fills route nowhere
    scatter_rows(x, send.pos, s_payload, dst_scale=s_scales, meta=(topk_ids, topk_weights),
                 dst_meta=(s_ids, s_weights))
    recv_buf = torch.empty((recv_rows, fmt.width), dtype=torch.uint8, device=x.device)
    comm.all_to_all(recv_buf, send_buf, group, "ep_dispatch payload", timeout_s, recv_splits, send_splits)
    r_payload, r_scales, r_ids, r_weights = fmt.views(recv_buf)

    mine_layout = layout(r_ids, local, lo=rank * local)
    recv_x = torch.empty((grouped_rows, hidden), dtype=fmt.payload_dtype, device=x.device)
    recv_scales = torch.empty(grouped_rows, dtype=torch.float32, device=x.device) if fmt.scaled else None
    scatter_rows(r_payload, mine_layout.pos, recv_x, src_scale=r_scales, dst_scale=recv_scales)
    handle = FusedHandle(group, world, tokens, hidden, x.dtype, timeout_s, grouped_rows, mine_layout.pos, r_weights,
                         send_pos=send.pos, send_splits=send_splits, recv_splits=recv_splits, capacity=capacity)
    dropped = send.dropped if capacity is not None else torch.zeros((), dtype=torch.int64, device=x.device)
    return DispatchResult(recv_x, recv_scales, mine_layout.counts, mine_layout.offsets, dropped, handle)


def _entries_per_rank(topk_ids: torch.Tensor, local: int, world: int) -> torch.Tensor:
    """[R] int64 (token, expert) entries this rank sends to each peer (device only)."""
    dest = torch.where(topk_ids >= 0, topk_ids.long() // local, world).clamp_(max=world).flatten()
    counts = torch.zeros(world + 1, dtype=torch.int64, device=topk_ids.device)
    return counts.scatter_add_(0, dest, torch.ones_like(dest))[:world]


def _dispatch_local(x, topk_ids, topk_weights, num_experts, quant, capacity, group, timeout_s):
    tokens, hidden = x.shape
    k = topk_ids.shape[1]
    ids = topk_ids = topk_ids.contiguous()
    dropped = torch.zeros((), dtype=torch.int64, device=x.device)
    if capacity is not None:     # the first C routed tokens are kept, as with one peer
        per_token = layout(topk_ids, 1, width=num_experts, dedup=True, capacity=capacity)
        kept = (per_token.pos >= 0).any(dim=1, keepdim=True)
        ids = torch.where(kept, topk_ids, -1)
        dropped = per_token.dropped
    lay = layout(ids, num_experts)
    scaled = quant == "int8"
    recv_x = torch.empty((tokens * k, hidden), dtype=torch.int8 if scaled else x.dtype, device=x.device)
    recv_scales = torch.empty(tokens * k, dtype=torch.float32, device=x.device) if scaled else None
    scatter_rows(x, lay.pos, recv_x, dst_scale=recv_scales)
    handle = FusedHandle(group, 1, tokens, hidden, x.dtype, timeout_s, tokens * k, lay.pos,
                         topk_weights.float().contiguous(), capacity=capacity)
    return DispatchResult(recv_x, recv_scales, lay.counts, lay.offsets, dropped, handle)


# ------------------------------------------------------------------ combine
def ep_combine(expert_out: torch.Tensor, handle: FusedHandle) -> torch.Tensor:
    """Fused implementation of :func:`ascend_ext.ops.ep_combine` (arguments validated by the caller)."""
    h = handle
    dev = expert_out.device
    if h.send_pos is None:       # group of one: the received rows are the tokens
        return gather_reduce(expert_out, h.recv_pos, h.recv_weights,
                             torch.empty((h.num_tokens, h.hidden), dtype=h.dtype, device=dev))
    partial = gather_reduce(expert_out, h.recv_pos, h.recv_weights,
                            torch.empty((h.recv_pos.shape[0], h.hidden), dtype=h.dtype, device=dev))
    sent = sum(h.send_splits) if h.capacity is None else h.world * h.capacity
    back = torch.empty((sent, h.hidden), dtype=h.dtype, device=dev)
    comm.all_to_all(back, partial, h.group, "ep_combine payload", h.timeout_s, h.send_splits, h.recv_splits)
    return gather_reduce(back, h.send_pos, None, torch.empty((h.num_tokens, h.hidden), dtype=h.dtype, device=dev))
