"""Expert-parallel adapters: npu_moe_distribute_dispatch / npu_moe_distribute_combine.

The fused ops send each (token, expert) pair (not each token once per rank, as the
portable implementation does) and return rows grouped by local expert, with INT8
per-token dynamic quantisation under quant_mode=2 (scale = max|x| / 127). Their fixed
receive buffer (BS * world * min(local experts, K) rows) is sliced to the rows that
arrived. Masked slots (-1) and fixed-capacity mode have no counterpart in these ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...ops.moe.ep import DispatchResult, ReferenceHandle
from . import hccl_group_name, torch_npu


@dataclass
class NPUHandle(ReferenceHandle):
    expert_ids: torch.Tensor | None = None
    expand_idx: torch.Tensor | None = None
    ep_recv_counts: torch.Tensor | None = None
    tp_recv_counts: torch.Tensor | None = None
    topk_weights: torch.Tensor | None = None
    group_name: str = ""
    num_experts: int = 0
    rank: int = 0


def ep_dispatch(x, topk_ids, topk_weights, num_experts, group, *, quant, max_tokens_per_rank, timeout_s, check_values):
    if max_tokens_per_rank is not None:
        raise NotImplementedError("npu_moe_distribute_dispatch has no fixed-capacity mode; use the reference")
    if check_values and bool((topk_ids < 0).any()):
        raise NotImplementedError("npu_moe_distribute_dispatch has no masked slots (-1); use the reference")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    name = hccl_group_name(group)
    ids = topk_ids.to(torch.int32)
    expand_x, scales, expand_idx, counts, ep_recv_counts, tp_recv_counts, _ = torch_npu().npu_moe_distribute_dispatch(
        x, ids, name, world, rank, num_experts, quant_mode=2 if quant == "int8" else 0, expert_token_nums_type=1)
    received = int(counts.sum())
    offsets = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.cumsum(counts.to(torch.int64), 0)
    handle = NPUHandle(group, world, x.shape[0], x.shape[1], x.dtype, timeout_s or 0.0,
                       torch.arange(received, device=x.device), torch.ones(received, device=x.device), received,
                       expert_ids=ids, expand_idx=expand_idx, ep_recv_counts=ep_recv_counts,
                       tp_recv_counts=tp_recv_counts, topk_weights=topk_weights.float(), group_name=name,
                       num_experts=num_experts, rank=rank)
    return DispatchResult(expand_x[:received], scales[:received] if quant == "int8" else None,
                          counts.to(torch.int64), offsets, torch.zeros((), dtype=torch.int64, device=x.device), handle)


def ep_combine(expert_out, handle):
    if not isinstance(handle, NPUHandle):
        raise TypeError("this handle did not come from the NPU ep_dispatch")
    capacity = handle.num_tokens * handle.world * min(handle.num_experts // handle.world, handle.expert_ids.shape[1])
    padded = expert_out.new_zeros((max(capacity, expert_out.shape[0]), expert_out.shape[1]))
    padded[:expert_out.shape[0]] = expert_out
    return torch_npu().npu_moe_distribute_combine(
        padded.to(handle.dtype), handle.expert_ids, handle.expand_idx, handle.ep_recv_counts, handle.topk_weights,
        handle.group_name, handle.world, handle.rank, handle.num_experts, tp_send_counts=handle.tp_recv_counts)
