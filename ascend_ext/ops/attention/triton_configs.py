"""Per-device tile configurations of the Triton attention kernels.

First level (``SUB_M * NUM_SUB`` query rows × ``BLOCK_N`` keys) is the matrix-unit
tile: each K/V tile is read once per program. Second level (``SUB_M`` rows) is the
softmax/rescale (vector) tile.

* NVIDIA Hopper (sm90): measured on an H100 with ``benchmarks/attention.py``; the
  table lists the fastest configuration of the sweep per head dim (see
  benchmarks/NOTES.md for the numbers).
* Ascend 910B (candidates, unmeasured: no NPU here). A 910B AI core pairs one Cube
  unit (16×16×16 fp16 fractal MMA, L0A/L0B 64 KiB, L0C 128 KiB) with two Vector units
  (UB 192 KiB each). FastAttention's split: a large Cube tile (128 query rows × 512
  keys for D=128 keeps the fp32 scores 256 KiB in L0C+L1 across two passes) and the
  Vector units each taking half the rows (SUB_M = 64) so both vector cores run the
  softmax of one Cube tile in parallel. In Triton terms: SUB_M 64, NUM_SUB 2,
  BLOCK_N 256-512; triton-ascend maps one program to one AI core, so the grid should
  be about the core count (20-24 on 910B) times a small multiple.
* CPU (Triton interpreter, tests only): small tiles that still exercise several key
  blocks and both sub-tiles on test-sized inputs.
"""

from __future__ import annotations

import functools

import torch

# (SUB_M, NUM_SUB, BLOCK_N, num_warps, num_stages) keyed by head-dim bucket
_SM90 = {   # sweep of 2026-11-23 on an H100 (benchmarks/NOTES.md)
    64: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=64, num_warps=8, num_stages=3),
    128: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=128, num_warps=8, num_stages=3),
    256: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=8, num_stages=2),
}
_GENERIC_CUDA = {
    64: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    128: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    256: dict(SUB_M=32, NUM_SUB=1, BLOCK_N=32, num_warps=4, num_stages=1),
}
ASCEND_910B_CANDIDATES = {
    64: dict(SUB_M=64, NUM_SUB=2, BLOCK_N=512, num_warps=1, num_stages=1),
    128: dict(SUB_M=64, NUM_SUB=2, BLOCK_N=256, num_warps=1, num_stages=1),
    256: dict(SUB_M=32, NUM_SUB=2, BLOCK_N=128, num_warps=1, num_stages=1),
}
_INTERPRETER = dict(SUB_M=16, NUM_SUB=2, BLOCK_N=32, num_warps=4, num_stages=1)

# paged attention (decode / chunked prefill): BLOCK_M packed (token, head) rows
_PAGED_SM90 = dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=2)
_PAGED_GENERIC = dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=2)
_PAGED_INTERPRETER = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


def _bucket(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


@functools.lru_cache(maxsize=64)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype, causal: bool) -> dict:
    if device.type == "cpu":
        return dict(_INTERPRETER)
    if device.type == "npu":
        return dict(ASCEND_910B_CANDIDATES[_bucket(head_dim)])
    major, _ = _capability(device)
    table = _SM90 if major >= 9 else _GENERIC_CUDA
    cfg = dict(table[_bucket(head_dim)])
    if dtype == torch.float32:        # fp32 tiles take twice the shared memory
        cfg.update(NUM_SUB=1, BLOCK_N=min(cfg["BLOCK_N"], 64), num_stages=min(cfg["num_stages"], 2))
    return cfg


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> dict:
    if device.type == "cpu":
        return dict(_PAGED_INTERPRETER)
    if device.type == "npu":
        return dict(BLOCK_M=16, BLOCK_N=128, num_warps=1, num_stages=1)
    major, _ = _capability(device)
    cfg = dict(_PAGED_SM90 if major >= 9 else _PAGED_GENERIC)
    if head_dim > 128 or dtype == torch.float32:
        cfg.update(BLOCK_N=32, num_stages=2)
    return cfg
