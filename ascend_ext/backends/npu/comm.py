"""Tiling-AllReduce adapter: npu_mm_all_reduce_base (matmul + all-reduce, fused) per token tile.

Each tile is one fused call on the NPU stream; consecutive tiles' matmul and HCCL work
overlap inside and across the fused kernels. The bias is added once after the reduction.
fp16/bf16 on 1, 2, 4 or 8 ranks only (documented limits).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import constraints, hccl_group_name, torch_npu


def tiled_linear_allreduce(x, weight, bias, group, *, tile_tokens, timeout_s):
    constraints.check_mm_allreduce(x, weight, dist.get_world_size(group))
    name = hccl_group_name(group)
    fused = torch_npu().npu_mm_all_reduce_base
    w_t = weight.t()
    out = torch.cat([fused(x[start:start + tile_tokens], w_t, name, reduce_op="sum")
                     for start in range(0, x.shape[0], tile_tokens)]) if x.shape[0] else x.new_zeros((0, weight.shape[0]))
    return out + bias if bias is not None else out
