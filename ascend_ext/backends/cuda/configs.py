"""Tile configurations of the Triton kernels on NVIDIA GPUs.

Flash (varlen prefill): first level ``SUB_M * NUM_SUB`` query rows × ``BLOCK_N`` keys
is the matrix-unit tile (each K/V tile read once per program); second level ``SUB_M``
rows is the softmax/rescale tile. Hopper (sm90) entries are the fastest of the H100
sweep of 2026-11-23 (benchmarks/NOTES.md); other GPUs get conservative tiles.

Paged (decode / chunked prefill): ``BLOCK_M`` packed (token, head) rows × ``BLOCK_N`` keys.
"""

from __future__ import annotations

import functools

import torch

from ...kernels.triton.common import head_dim_bucket

_SM90 = {
    64: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=64, num_warps=8, num_stages=3),
    128: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=128, num_warps=8, num_stages=3),
    256: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=8, num_stages=2),
}
_GENERIC = {
    64: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    128: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    256: dict(SUB_M=32, NUM_SUB=1, BLOCK_N=32, num_warps=4, num_stages=1),
}
_PAGED_SM90 = dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=2)
_PAGED_GENERIC = dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=2)


@functools.lru_cache(maxsize=64)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> dict:
    major, _ = _capability(device)
    cfg = dict((_SM90 if major >= 9 else _GENERIC)[head_dim_bucket(head_dim)])
    if dtype == torch.float32:        # fp32 tiles take twice the shared memory
        cfg.update(NUM_SUB=1, BLOCK_N=min(cfg["BLOCK_N"], 64), num_stages=min(cfg["num_stages"], 2))
    return cfg


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> dict:
    major, _ = _capability(device)
    cfg = dict(_PAGED_SM90 if major >= 9 else _PAGED_GENERIC)
    if head_dim > 128 or dtype == torch.float32:
        cfg.update(BLOCK_N=32, num_stages=2)
    return cfg
