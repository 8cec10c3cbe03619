"""Tile configurations of the Triton kernels under the interpreter on CPU (tests only):
small tiles that still exercise several key blocks and both sub-tiles on test-sized inputs."""

from __future__ import annotations

import torch

from ...kernels.triton.mla_plan import DeviceModel, build_plan

_FLASH = dict(SUB_M=16, NUM_SUB=2, BLOCK_N=32, num_warps=4, num_stages=1)
_PAGED = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
_MLA = {"compute": dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1),
        "memory": dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)}
# a small "device" so test-sized sequences still take the split path
_MLA_MODEL = DeviceModel(units=8, bandwidth=1.0e10, mma_rate={"compute": 1e11, "memory": 1e11})


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype, window_left: int = -1,
                 causal_keys: int = -1) -> dict:
    return dict(_FLASH)


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype, cache_dtype=None,
                 batch_kv_heads: int = 0, max_keys: int = 0) -> dict:
    return dict(_PAGED)


def mla_plan(device: torch.device, **shape) -> dict:
    return build_plan(_MLA, _MLA_MODEL, tma=False, **shape)
