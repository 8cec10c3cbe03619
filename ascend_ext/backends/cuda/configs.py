"""Tile configurations of the Triton kernels on NVIDIA GPUs.

Flash (varlen prefill): first level ``SUB_M * NUM_SUB`` query rows × ``BLOCK_N`` keys
is the matrix-unit tile (each K/V tile read once per program); second level ``SUB_M``
rows is the softmax/rescale tile. Hopper (sm90) entries are the fastest of the H100
sweep of 2026-11-23 (benchmarks/NOTES.md); other GPUs get conservative tiles.

Paged (decode / chunked prefill): ``BLOCK_M`` packed (token, head) rows × ``BLOCK_N`` keys.

MLA decode (:func:`mla_plan`, paths and cost model in ``kernels/triton/mla_plan.py``):
Hopper tiles measured on H100 (benchmarks/mla.py, benchmarks/NOTES.md). The memory
path runs 8 warps (4 spilled: with 16-row ``mma.sync`` tiles every warp holds all 576
query columns) and 3 stages of TMA boxes; on H100 one 32-row tile ran at 49-61% of
copy bandwidth in run 1, hence 16-row tiles. 17-32 rows (Hq 16 x s_q 2, 16-bit cache)
take one 32-row tile in the transposed formulation (keys x rows wgmma, one warpgroup,
2 stages: 3 do not fit next to the queries in shared memory): 75 vs 89 us at B 32 ctx 4k
(issue 15 session 2, call 1). With 8 warps, or with an FP8 cache (widened tiles as
register wgmma operands), the transposed kernel was slower on H100, and for 16 rows it
only tied the row-major one (65.8 vs 64.5 us).
"""

from __future__ import annotations

import functools

import torch

from ...kernels.triton.common import head_dim_bucket, interpreting
from ...kernels.triton.mla_plan import DeviceModel, build_plan

# TMA: K/V by tensor descriptor (Hopper kernel); WS: warp-specialised mask-free loop.
# H100 2026-11-25, d128 S=4k: TMA+WS 501 / 564 TFLOP/s causal / non-causal vs 417 / 491
# for the portable kernel (WS with 4 warps fails to compile in Triton 3.6).
# d64: 128 x 128 tiles, 4 warps, warp-specialised (this compiles at d64), H100 2026-12-07 ablation
# (B*S = 32k, 32 heads) vs the former 128 x 64, 8 warps: S 1k 291 / 409 vs 297 / 407 TFLOP/s
# (causal / not), 4k 392 / 436 vs 392 / 409, 16k 432 / 450 vs 380 / 429.
# MASK_TMA: the tiling-mask walk (TileMask of no native form) reads K/V by descriptor too. H100
# 2026-12-07, random 30% block-sparse mask, 16k tokens, 16 heads, d128: 1.28 ms vs 1.50 ms by
# pointers (flex_attention 1.72 ms); compiled parity passed. Not measured for d64.
_SM90 = {
    64: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=128, num_warps=4, num_stages=3, TMA=True, WS=True),
    128: dict(SUB_M=128, NUM_SUB=1, BLOCK_N=128, num_warps=8, num_stages=3, TMA=True, WS=True, MASK_TMA=True),
    256: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=8, num_stages=2),
}
# Narrow sliding windows and short causal sequences (each query tile sees few key tiles):
# 64 x 64 tiles, 4 warps, so more programs share an SM and the masked diagonal or window edge
# costs less. H100 2026-12-06, 8 causal documents in 16k tokens with a 512-key window: 0.206 ms
# vs 0.255 ms for the d128 entry above (flex_attention 0.301); causal S 1k: flash_config.
SHORT_SPAN_KEYS = 1024
_SM90_SHORT_SPAN = {
    128: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=3, TMA=True),
}
# d64 takes them for short causal sequences only (windows at d64 not measured): causal S 1k,
# H100, three ablations: +3%, +5%, +5.5% over the d64 entry (2026-12-07: 308 vs 292 TFLOP/s).
_SM90_SHORT_CAUSAL = {**_SM90_SHORT_SPAN, 64: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=3, TMA=True)}
_GENERIC = {
    64: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    128: dict(SUB_M=64, NUM_SUB=1, BLOCK_N=64, num_warps=4, num_stages=2),
    256: dict(SUB_M=32, NUM_SUB=1, BLOCK_N=32, num_warps=4, num_stages=1),
}
# PDL: the split-KV combine launches while the split kernel finishes (programmatic dependent
# launch). H100 2026-12-07, same run vs a plain launch: B 1 ctx 1k 8.32 vs 9.41 us, 4k-32k and
# B 8 0.2-0.4 us faster; never slower.
# Split counts (SPLIT_WAVES=1, FILL_SMS; paged_attention.choose_splits): one wave of 4 resident
# programs per SM, then one-tile splits up to one program per SM. H100 2026-12-07, two runs, vs
# the older rule (2 per SM, >= 2 tiles): B 8 ctx 1k 8 splits 16.0 / 16.0 us vs 5 18.1 / 18.1,
# ctx 4k 53.9 / 54.3 vs 55.3 / 54.7; B 1 ctx 1k 16 splits 7.88 / 7.94 vs 8 8.61 / 8.85. Measured
# for the 16-row decode tile (4 fit an SM); the 32 / 64-row tiles of chunked prefill keep the
# older rule (PREFILL_SPLITS).
_PAGED_SM90_TILE = dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=2, PDL=True)
_PAGED_SM90 = dict(_PAGED_SM90_TILE, SPLIT_WAVES=1, FILL_SMS=True, PREFILL_SPLITS=dict(SPLIT_WAVES=0, FILL_SMS=False))
# 8-bit caches (widening in registers: 140 registers, 3 programs per SM): capped at 128 registers
# so 4 fit, split counts filling up to two waves of them. H100 2026-12-06 sweep, fp8: B 128 ctx
# 4k 425 vs 526 us uncapped; B 8 ctx 16k 120 us with 16 splits vs 148 with the bf16 rule's 5.
_PAGED_SM90_8BIT = dict(_PAGED_SM90_TILE, maxnreg=128, SPLIT_WAVES=2)   # FILL_SMS: not measured for 8-bit
# A few long sequences (B = 1 with 8 KV heads: 8 programs before splitting, >= 4k keys): each
# split program streams 128-key tiles, twice the bytes in flight (ncu, B 1 16k: 2 programs of 4
# warps per SM, DRAM at 62% of peak). H100, two runs (2026-12-07, sessions 9 and 10): 16k 34.2 /
# 33.0 us vs 36.9 / 35.5 with 64-key tiles, 32k 56.9 / 54.6 vs 60.0 / 58.1; slower at B 8 (4k:
# 62.7 vs 54.8 us). With the split counts below (session 11, same runs): 4k 11.8 / 11.9 / 11.8 vs
# 12.1 / 12.1 / 12.4, 8k 17.0 / 17.0 vs 17.8 / 17.7, 12k 27.5 vs 29.2; 2k 11.2 / 11.2 vs 9.8 / 9.8.
FEW_LONG_SEQUENCES = dict(min_keys=4096, sms_per_program=16)
_PAGED_GENERIC = dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=2)


_MLA_SM90 = {"compute": dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
             "memory": dict(BLOCK_M=16, BLOCK_N=64, num_warps=8, num_stages=3),
             "memory32": dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2, TRANS=True),
             "compute8": dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=3)}
_MLA_GENERIC = {"compute": dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
                "memory": dict(BLOCK_M=16, BLOCK_N=32, num_warps=8, num_stages=3)}
# Rough rates for the split cost model: copy bandwidth (B/s), MMA rate per path (flop/s).
MLA_RATES = {"sm90": (3.0e12, {"compute": 450e12, "memory": 200e12}),
             "generic": (1.5e12, {"compute": 150e12, "memory": 100e12})}


@functools.lru_cache(maxsize=64)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def flash_config(device: torch.device, head_dim: int, dtype: torch.dtype, window_left: int = -1,
                 causal_keys: int = -1) -> dict:
    """Tiles of the varlen kernel; ``window_left`` (keys each query sees before itself, -1 =
    unbounded) picks the short-span tiles for narrow sliding windows on Hopper, and so does
    ``causal_keys`` (causal attention without a window: the longest key sequence, -1 = not
    causal) for short causal sequences. H100 2026-12-07, d128 causal, B*S = 32k: S 1k 377
    TFLOP/s with the short-span tiles vs 324 with the default ones; S 2k 402 vs 418, S 4k
    421 vs 472 (the default wins from 2k); not causal, S 1k: 435 vs 460."""
    major, _ = _capability(device)
    bucket = head_dim_bucket(head_dim)
    short, span = (_SM90_SHORT_SPAN, window_left) if window_left >= 0 else (_SM90_SHORT_CAUSAL, causal_keys)
    if major >= 9 and 0 <= span <= SHORT_SPAN_KEYS and bucket in short:
        cfg = dict(short[bucket])
    else:
        cfg = dict((_SM90 if major >= 9 else _GENERIC)[bucket])
    if dtype == torch.float32:        # fp32 tiles take twice the shared memory
        cfg.update(NUM_SUB=1, BLOCK_N=min(cfg["BLOCK_N"], 64), num_stages=min(cfg["num_stages"], 2),
                   TMA=False, WS=False)
    return cfg


def paged_config(device: torch.device, head_dim: int, dtype: torch.dtype, cache_dtype=None,
                 batch_kv_heads: int = 0, max_keys: int = 0) -> dict:
    """Tiles of the paged kernel for queries of ``dtype`` over a cache of ``cache_dtype``
    (None: the same); 8-bit caches have their own Hopper entry. ``batch_kv_heads`` (sequences
    x KV heads) and ``max_keys`` (longest context; 0 = not known) pick 128-key tiles for a few
    long sequences on Hopper (:data:`FEW_LONG_SEQUENCES`)."""
    major, _ = _capability(device)
    eight_bit = cache_dtype is not None and cache_dtype.itemsize == 1
    cfg = dict((_PAGED_SM90_8BIT if eight_bit else _PAGED_SM90) if major >= 9 else _PAGED_GENERIC)
    if head_dim > 128 or dtype == torch.float32:
        cfg.update(BLOCK_N=32, num_stages=2)
    elif major >= 9 and not eight_bit and max_keys >= FEW_LONG_SEQUENCES["min_keys"] \
            and 0 < batch_kv_heads * FEW_LONG_SEQUENCES["sms_per_program"] <= _sm_count(device):
        cfg["BLOCK_N"] = 128
    return cfg


@functools.lru_cache(maxsize=64)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def mla_device_model(kind: str, units: int) -> DeviceModel:
    """The split cost model of an NVIDIA GPU ('sm90' or 'generic') with ``units`` SMs."""
    bandwidth, rates = MLA_RATES[kind]
    return DeviceModel(units=units, bandwidth=bandwidth, mma_rate=rates)


def mla_plan(device: torch.device, **shape) -> dict:
    """Launch plan of the Triton MLA decode (see :func:`ascend_ext.kernels.triton.mla_plan.build_plan`)."""
    hopper = _capability(device)[0] == 9 and not interpreting()
    kind = "sm90" if hopper else "generic"
    return build_plan(_MLA_SM90 if hopper else _MLA_GENERIC, mla_device_model(kind, _sm_count(device)),
                      tma=hopper, pdl=hopper, **shape)
