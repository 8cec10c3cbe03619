"""Tile configurations of the Triton kernels under the interpreter on CPU (tests only):
small tiles that still exercise several key blocks and both sub-tiles on test-sized inputs."""

from __future__ import annotations

import torch

_FLASH = dict(SUB_M=16, NUM_SUB=2, BLOCK_N=32, num_warps=4, num_stages=1)
_PAGED = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> dict:
    return dict(_FLASH)


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype) -> dict:
    return dict(_PAGED)
