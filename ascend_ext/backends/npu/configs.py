"""Tile configurations of the Triton kernels on Ascend NPUs (triton-ascend).

Candidates for the Ascend 910B, unmeasured (no NPU here). A 910B AI core pairs one
Cube unit (16×16×16 fp16 fractal MMA, L0A/L0B 64 KiB, L0C 128 KiB) with two Vector
units (UB 192 KiB each). FastAttention's split: a large Cube tile (128 query rows × 512
keys for D=128 keeps the fp32 scores 256 KiB in L0C+L1 across two passes) and the
Vector units each taking half the rows (SUB_M = 64), so both vector cores run the
softmax of one Cube tile in parallel: SUB_M 64, NUM_SUB 2, BLOCK_N 256-512.
triton-ascend maps one program to one AI core (grid ≈ 20-24 cores × a small multiple)
and ignores ``num_warps`` / ``num_stages``.

MLA decode candidates (:func:`mla_plan`): Cube rows come in 16s, so the memory path
needs no padding for Hq 16 (BLOCK_M 16); a 64 × 256 fp32 half-accumulator is 64 KiB,
so BLOCK_M 64 with two halves fills L0C. A 128-key latent tile (128 × 576 × 2 B =
144 KiB) double-buffers in L1 (512 KiB): BLOCK_N 128. 24 AI cores, HBM ~1.6 TB/s;
the split cost model then targets ~2 programs per AI core. triton-ascend has no TMA
descriptors.
"""

from __future__ import annotations

import torch

from ...kernels.triton.common import head_dim_bucket
from ...kernels.triton.mla_plan import DeviceModel, build_plan

ASCEND_910B_CANDIDATES = {
    64: dict(SUB_M=64, NUM_SUB=2, BLOCK_N=512, num_warps=1, num_stages=1),
    128: dict(SUB_M=64, NUM_SUB=2, BLOCK_N=256, num_warps=1, num_stages=1),
    256: dict(SUB_M=32, NUM_SUB=2, BLOCK_N=128, num_warps=1, num_stages=1),
}
PAGED_910B_CANDIDATE = dict(BLOCK_M=16, BLOCK_N=128, num_warps=1, num_stages=1)
MLA_910B_CANDIDATES = {"compute": dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=1),
                       "memory": dict(BLOCK_M=16, BLOCK_N=128, num_warps=4, num_stages=1)}
MLA_910B_MODEL = DeviceModel(units=24, bandwidth=1.6e12, mma_rate={"compute": 280e12, "memory": 150e12})


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype, window_left: int = -1,
                 causal_keys: int = -1) -> dict:
    return dict(ASCEND_910B_CANDIDATES[head_dim_bucket(head_dim)])


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype, cache_dtype=None,
                 batch_kv_heads: int = 0, max_keys: int = 0) -> dict:
    return dict(PAGED_910B_CANDIDATE)


def mla_plan(device: torch.device, **shape) -> dict:
    """Launch plan of the Triton MLA decode (see :func:`ascend_ext.kernels.triton.mla_plan.build_plan`)."""
    return build_plan(MLA_910B_CANDIDATES, MLA_910B_MODEL, tma=False, **shape)
