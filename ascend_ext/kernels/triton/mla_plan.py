"""Launch plans of the Triton MLA decode: path, tiles and split-KV count.

The per-device parts (tile tables, device rates, TMA capability) live in the backends'
``configs.py`` (``mla_plan``); they call :func:`build_plan` with them.

Two paths, chosen from the packed row count ``rows = s_q * Hq`` of one sequence:

* ``compute`` (rows >= 64, e.g. Hq 128 at TP1): 64-row tiles, 8 warps, so the MMAs
  are Hopper warpgroup MMAs and each warpgroup holds half of the 512-wide output;
  flop/byte ~ 2 * rows * 1088 / 1152 >> the ridge point, so the tile shape and the
  MMA rate decide.
* ``memory`` (rows < 64, e.g. Hq 16 at TP8): 16-row tiles (32 rows = two row tiles of
  one sequence, adjacent in the grid so the second read of a latent tile hits L2),
  as many bytes in flight as shared memory allows; the bandwidth roofline decides.
  A device table may add a ``memory32`` entry for 17-32 rows of 16-bit queries and
  caches (e.g. Hq 16 x s_q 2): one 32-row tile, typically in the transposed (``TRANS``)
  formulation, so each latent tile is read once for both query positions.

The split-KV count comes from a small cost model of the device (:class:`DeviceModel`):
waves of programs x key tiles per program, plus the combine traffic of the fp32
partials. Graph-safe: it depends on shapes only (``max_len`` is
``block_size * block_table.shape[1]``), never on ``seq_lens`` values; inside the kernel each
sequence cuts its own keys into the planned number of splits (``split_keys``), so a table
wider than the contexts (vLLM's is sized for ``max_model_len``) still spreads every sequence
over all its splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .common import next_pow2


@dataclass(frozen=True)
class DeviceModel:
    """What the split cost model knows of a device (rough rates, not measurements)."""

    units: int                    # compute units: SMs / AI cores
    bandwidth: float              # copy bandwidth, bytes/s
    mma_rate: dict                # path -> flop/s of its MMAs


def choose_path(heads: int, s_q: int, q_dtype: torch.dtype) -> str:
    """'compute' for >= 64 packed rows of a 16-bit query, else 'memory'."""
    return "compute" if heads * s_q >= 64 and q_dtype != torch.float32 else "memory"


def split_cost(splits: int, *, programs: int, units: int, max_len: int, block_n: int, tile_s: float,
               partial_bytes: int, bandwidth: float) -> float:
    """Estimated seconds: waves of programs, each over its key tiles (+2 tiles of prologue and
    epilogue), plus the combine (fp32 partials written and read, one extra launch)."""
    waves = triton.cdiv(programs * splits, units)
    tiles = triton.cdiv(triton.cdiv(max_len, splits), block_n)
    combine = 0.0 if splits == 1 else 2 * splits * partial_bytes / bandwidth + 3e-6
    return waves * (tiles + 2) * tile_s + combine


def choose_splits(model: DeviceModel, *, path: str, programs: int, max_len: int, block_m: int, block_n: int,
                  width: int, rank: int, kv_bytes: int, out_rows: int) -> int:
    """Split-KV count minimising :func:`split_cost`; each split keeps >= 2 key tiles.

    The compute path then takes at least 2 splits where its programs fill less than one wave,
    and doubles them until one wave is full, while splits keep >= 32 key tiles. H100, Hq 128,
    2026-12-07 grid (graph replay, us): the best count gave ~128-256 programs on 132 SMs and
    never the unsplit kernel: s_q 1 B 32 4k / 16k / 32k x2 144 / 527 / 1046 vs x4 156 / 543 /
    1059; B 16 16k x4 285 vs x8 294; B 64 4k x2 287 vs x1 337; s_q 2 B 32 4k / 16k / 32k x2
    281 / 1005 / 1973 vs x1 327 / 1221 / 2413; B 16 4k x2 147 vs x4 161. (The older rule, two
    waves, took x4 for s_q 1 B 32 at >= 8k keys, and for every capacity-sized vLLM table.)"""
    units, bandwidth, rate = model.units, model.bandwidth, model.mma_rate[path]
    tile_s = max(block_n * width * kv_bytes / (bandwidth / units),
                 2 * block_m * block_n * (width + rank) / (rate / units))
    limit = max(1, min(64, max_len // (2 * block_n)))
    costs = {s: split_cost(s, programs=programs, units=units, max_len=max_len, block_n=block_n, tile_s=tile_s,
                           partial_bytes=out_rows * rank * 4, bandwidth=bandwidth) for s in range(1, limit + 1)}
    best = min(costs, key=lambda s: (costs[s], s))
    if path == "compute":
        longest = min(64, max_len // (32 * block_n))   # splits of >= 32 key tiles
        if programs < units and longest >= 2:
            best = max(best, 2)
        while programs * best < 0.95 * units and best * 2 <= longest:
            best *= 2
    return best


def build_plan(tiles: dict, model: DeviceModel, *, tma: bool, pdl: bool = False, batch: int, heads: int, s_q: int, max_len: int,
               rank: int, rope: int, cache_block: int, q_dtype: torch.dtype, kv_dtype: torch.dtype,
               config: dict | None = None, num_splits: int | None = None) -> dict:
    """Everything the launch needs: tiles, constexpr switches, row tiles, split count.

    ``tiles``: path -> dict(BLOCK_M, BLOCK_N, num_warps, num_stages[, TRANS]) of the device
    (optional ``memory32``: the memory path's tiles for 17-32 rows, 16-bit q and cache;
    optional ``compute8``: the compute path's tiles for 8-bit caches);
    ``tma``: the device has Hopper tensor-memory copies (used where the tile allows);
    ``pdl``: the combine of a split plan starts by programmatic dependent launch (CUDA sm90+);
    ``config`` / ``num_splits`` override the plan (tests, benchmarks)."""
    path = choose_path(heads, s_q, q_dtype)
    kv_bytes = torch.empty((), dtype=kv_dtype).element_size()
    sixteen_bit = q_dtype != torch.float32 and kv_bytes == 2
    key = "memory32" if path == "memory" and 16 < heads * s_q <= 32 and sixteen_bit and "memory32" in tiles else path
    if path == "compute" and kv_bytes == 1 and "compute8" in tiles:
        key = "compute8"
    plan = dict({"TRANS": False, "PDL": pdl, **tiles[key]}, TMA=False, WARP_SPEC=False)
    plan["MASK_N"] = min(16, plan["BLOCK_N"])
    if q_dtype == torch.float32:   # fp32 MMAs: small tiles keep registers in check
        plan.update(BLOCK_M=16, BLOCK_N=16, num_stages=1)
    plan.update(config or {})
    plan["BLOCK_C"] = next_pow2(rank, 32)
    plan["BLOCK_R"] = next_pow2(rope)
    plan["EVEN"] = plan["BLOCK_C"] == rank and plan["BLOCK_R"] == rope
    if "TMA" not in (config or {}):
        plan["TMA"] = (tma and plan["EVEN"] and cache_block % plan["BLOCK_N"] == 0
                       and ((rank + rope) * kv_bytes) % 16 == 0)
    plan["path"] = path
    plan["row_tiles"] = triton.cdiv(heads * s_q, plan["BLOCK_M"])
    if num_splits is None:
        num_splits = choose_splits(model, path=path, programs=batch * plan["row_tiles"], max_len=max_len,
                                   block_m=plan["BLOCK_M"], block_n=plan["BLOCK_N"], width=rank + rope, rank=rank,
                                   kv_bytes=kv_bytes, out_rows=batch * heads * s_q)
    plan["num_splits"] = num_splits
    return plan
