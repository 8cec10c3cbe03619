"""Tiling-mask: an attention mask stored per tile, never as an S×S matrix.

FastAttention's tiling-mask classifies every (query tile, key tile) pair as

* empty   - no element visible: the kernel never loads the key tile;
* full    - every element visible: the kernel takes the mask-free path;
* partial - the kernel applies an element mask taken from a small pool of
            deduplicated ``tile_q × tile_k`` mask tiles.

Storage is run-length per query-tile row (CSR): row ``i`` owns runs
``row_ptr[i]:row_ptr[i+1]``; run ``r`` covers key tiles
``run_start[r] .. run_start[r] + run_len[r] - 1``, all of one class: full when
``run_pool[r] == -1``, else partial with element mask ``pool[run_pool[r]]``. The
builders store a row's full runs before its partial runs (each group by column), so
a kernel can walk all full tiles of a row in one loop.
Empty tiles are simply absent. Causal, sliding-window and document masks need
O(#query tiles) runs and a handful of pool tiles, so a 128k × 128k causal mask
holds tens of KiB (a dense bool mask would be 16 GiB). The run form is smaller
than a per-tile class grid (which would already be 1 MiB at 128k with 128-wide
tiles) and is what the kernel iterates anyway.

Elements outside ``[0, seqlen_q) × [0, seqlen_k)`` never count: a boundary tile
whose in-range elements are all visible is "full" (kernels bound-check the
ragged edge themselves); pool tiles hold False there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .mask_rules import key_bounds

EMPTY, FULL, PARTIAL = 0, 1, 2
DEFAULT_TILE = (128, 128)


def _check_tile(tile) -> tuple[int, int]:
    try:
        tq, tk = (int(t) for t in tile)
    except (TypeError, ValueError):
        raise TypeError(f"tile must be a pair of ints (tile_q, tile_k), got {tile!r}") from None
    for name, t in (("tile_q", tq), ("tile_k", tk)):
        if t < 16 or t > 256 or t & (t - 1):
            raise ValueError(f"{name} must be a power of two in [16, 256], got {t}")
    return tq, tk


def _check_len(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


@dataclass(frozen=True, eq=False)
class TileMask:
    seqlen_q: int
    seqlen_k: int
    tile_q: int
    tile_k: int
    row_ptr: torch.Tensor    # int32 [num_tiles_q + 1]
    run_start: torch.Tensor  # int32 [R]
    run_len: torch.Tensor    # int32 [R]
    run_pool: torch.Tensor   # int32 [R], -1 = full
    pool: torch.Tensor       # bool [P, tile_q, tile_k]
    kind: tuple = ("dense",)
    """How it was built: ("window", left, right) for causal (right 0) / sliding windows,
    ("document", offsets) for packed documents, ("dense",) otherwise. Backends with native
    forms of these patterns (Ascend sparse modes, varlen splits) use it instead of tiles."""

    # ----------------------------------------------------------------- builders
    @classmethod
    def causal(cls, seqlen_q: int, seqlen_k: int, *, tile=DEFAULT_TILE) -> TileMask:
        """Bottom-right causal mask: query i sees keys j <= i + Lk - Lq."""
        return replace(cls._from_row_bounds(seqlen_q, seqlen_k, tile, window=(-1, 0)), kind=("window", -1, 0))

    @classmethod
    def sliding_window(cls, seqlen_q: int, seqlen_k: int, left: int, right: int, *,
                       tile=DEFAULT_TILE) -> TileMask:
        """flash-attn window (left, right), -1 = unbounded, bottom-right aligned."""
        for name, v in (("left", left), ("right", right)):
            if isinstance(v, bool) or not isinstance(v, int) or v < -1:
                raise ValueError(f"{name} must be -1 or an int >= 0, got {v!r}")
        return replace(cls._from_row_bounds(seqlen_q, seqlen_k, tile, window=(left, right)), kind=("window", left, right))

    @classmethod
    def document(cls, cu_seqlens, *, tile=DEFAULT_TILE) -> TileMask:
        """Block-diagonal mask of packed documents: tokens attend within their document.

        ``cu_seqlens`` int [D+1] document offsets (0 first, non-decreasing); the mask
        is ``total × total``. Combine with ``causal=True`` in the op for causal documents.
        """
        if isinstance(cu_seqlens, torch.Tensor):
            if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"cu_seqlens must be a 1-D int tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
            offsets = cu_seqlens.cpu().tolist()
        else:
            offsets = [int(x) for x in cu_seqlens]
        if not offsets or offsets[0] != 0 or any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {offsets}")
        total = offsets[-1]
        starts = torch.tensor(offsets[:-1], dtype=torch.int64)
        ends = torch.tensor(offsets[1:], dtype=torch.int64)
        lengths = ends - starts
        lo = torch.repeat_interleave(starts, lengths)
        hi = torch.repeat_interleave(ends, lengths)
        return replace(cls._build(total, total, _check_tile(tile), lo, hi, None), kind=("document", tuple(offsets)))

    @classmethod
    def from_dense(cls, mask: torch.Tensor, *, tile=DEFAULT_TILE) -> TileMask:
        """Any bool mask ``[Sq, Sk]`` (True = may attend)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise TypeError("mask must be a 2-D torch.bool tensor [seqlen_q, seqlen_k] (True = may attend)")
        sq, sk = mask.shape
        return cls._build(sq, sk, _check_tile(tile), None, None, mask.cpu())

    @classmethod
    def _from_row_bounds(cls, seqlen_q, seqlen_k, tile, window) -> TileMask:
        sq, sk = _check_len("seqlen_q", seqlen_q), _check_len("seqlen_k", seqlen_k)
        lo, hi = key_bounds(torch.arange(sq), sq, sk, window)
        return cls._build(sq, sk, _check_tile(tile), lo, hi, None)

    @classmethod
    def _build(cls, sq: int, sk: int, tile: tuple[int, int], lo, hi, dense) -> TileMask:
        """Classify tiles from per-row visible intervals [lo, hi) or from a dense mask."""
        tq, tk = tile
        nq, nk = -(-sq // tq), -(-sk // tk)
        if dense is not None:
            padded = torch.zeros(nq * tq, nk * tk, dtype=torch.bool)
            padded[:sq, :sk] = dense
            valid = torch.zeros_like(padded)
            valid[:sq, :sk] = True
            tiles = padded.view(nq, tq, nk, tk).permute(0, 2, 1, 3)          # [nq, nk, tq, tk]
            count = tiles.sum(dim=(2, 3))
            capacity = valid.view(nq, tq, nk, tk).sum(dim=(1, 3))
            kinds = torch.full((nq, nk), PARTIAL, dtype=torch.int8)
            kinds[count == 0] = EMPTY
            kinds[(count == capacity) & (count > 0)] = FULL
            part = (kinds == PARTIAL).nonzero()
            patterns = tiles[part[:, 0], part[:, 1]].reshape(len(part), tq * tk).to(torch.uint8)
        else:
            # pad rows past seqlen_q with an empty interval
            pad = nq * tq - sq
            lo = torch.cat([lo, torch.zeros(pad, dtype=torch.int64)]).view(nq, tq)
            hi = torch.cat([hi, torch.zeros(pad, dtype=torch.int64)]).view(nq, tq)
            real = hi > lo
            big = torch.iinfo(torch.int64).max
            max_lo = torch.where(real, lo, -1).amax(1)
            min_hi = torch.where(real, hi, big).amin(1)
            min_lo = torch.where(real, lo, big).amin(1)
            max_hi = torch.where(real, hi, -1).amax(1)
            c0 = torch.arange(nk, dtype=torch.int64) * tk
            c1 = (c0 + tk).clamp(max=sk)
            any_real = real.any(1)[:, None]
            nonempty = any_real & (c0[None] < max_hi[:, None]) & (c1[None] > min_lo[:, None])
            # full: every real row covers the whole in-range tile, and no row of the tile is dead
            rows_all_real = (real | (torch.arange(nq * tq).view(nq, tq) >= sq)).all(1)[:, None]
            full = nonempty & rows_all_real & (c0[None] >= max_lo[:, None]) & (c1[None] <= min_hi[:, None])
            kinds = torch.where(full, FULL, torch.where(nonempty, PARTIAL, EMPTY)).to(torch.int8)
            part = (kinds == PARTIAL).nonzero()
            # a row-interval tile is fully described by its rows' intervals relative to c0
            rel_lo = (lo[part[:, 0]] - c0[part[:, 1], None]).clamp(0, tk)
            rel_hi = (hi[part[:, 0]] - c0[part[:, 1], None]).clamp(0, tk)
            rel_hi = torch.minimum(rel_hi, (sk - c0[part[:, 1], None]).clamp(0, tk))
            rel_hi = torch.maximum(rel_hi, rel_lo)
            empty_row = rel_hi == rel_lo            # canonical form, so equal tiles dedupe
            rel_lo, rel_hi = rel_lo.masked_fill(empty_row, 0), rel_hi.masked_fill(empty_row, 0)
            patterns = torch.cat([rel_lo, rel_hi], dim=1)
        if len(part):
            uniq, pool_ids = torch.unique(patterns, dim=0, return_inverse=True)
        else:
            uniq, pool_ids = patterns[:0], torch.zeros(0, dtype=torch.int64)
        if dense is not None:
            pool = uniq.view(-1, tq, tk).bool()
        else:
            cols = torch.arange(tk)
            rl, rh = uniq[:, :tq], uniq[:, tq:]
            pool = (cols >= rl[..., None]) & (cols < rh[..., None])
        codes = torch.full((nq, nk), -2, dtype=torch.int64)
        codes[kinds == FULL] = -1
        codes[part[:, 0], part[:, 1]] = pool_ids
        return cls._from_codes(sq, sk, tq, tk, codes, pool.contiguous())

    @classmethod
    def _from_codes(cls, sq, sk, tq, tk, codes: torch.Tensor, pool: torch.Tensor) -> TileMask:
        """Run-length encode a [nq, nk] grid of codes (-2 empty, -1 full, >=0 pool id)."""
        nq, nk = codes.shape
        present = codes != -2
        prev = torch.cat([torch.full((nq, 1), -3, dtype=codes.dtype), codes[:, :-1]], dim=1)
        starts = present & (codes != prev)
        rows, cols = starts.nonzero(as_tuple=True)
        # run length: distance to the next change point (or the row end) among present tiles
        nxt = torch.cat([codes[:, 1:], torch.full((nq, 1), -3, dtype=codes.dtype)], dim=1)
        ends = present & (codes != nxt)
        erows, ecols = ends.nonzero(as_tuple=True)
        assert torch.equal(rows, erows)
        # within a row: full runs first, then partial runs, each by column (kernels walk a
        # row's full tiles in one loop when its full runs are consecutive)
        run_codes = codes[rows, cols]
        order = torch.argsort(rows * (2 * nk) + (run_codes >= 0).long() * nk + cols, stable=True)
        rows, cols, ecols = rows[order], cols[order], ecols[order]
        row_counts = torch.bincount(rows, minlength=nq) if nq else torch.zeros(0, dtype=torch.int64)
        row_ptr = torch.zeros(nq + 1, dtype=torch.int32)
        row_ptr[1:] = torch.cumsum(row_counts, 0)
        return cls(sq, sk, tq, tk, row_ptr, cols.int(), (ecols - cols + 1).int(),
                   codes[rows, cols].int(), pool)

    # ------------------------------------------------------------------ queries
    @property
    def num_tiles_q(self) -> int:
        return self.row_ptr.shape[0] - 1

    @property
    def num_tiles_k(self) -> int:
        return -(-self.seqlen_k // self.tile_k)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.row_ptr, self.run_start, self.run_len, self.run_pool, self.pool))

    @property
    def device(self) -> torch.device:
        return self.row_ptr.device

    def to(self, device) -> TileMask:
        return TileMask(self.seqlen_q, self.seqlen_k, self.tile_q, self.tile_k,
                        *(t.to(device) for t in (self.row_ptr, self.run_start, self.run_len,
                                                  self.run_pool, self.pool)), kind=self.kind)

    def tile_kinds(self) -> torch.Tensor:
        """int8 [num_tiles_q, num_tiles_k]: 0 empty, 1 full, 2 partial (derived, for tests/stats)."""
        kinds = torch.zeros(self.num_tiles_q, self.num_tiles_k, dtype=torch.int8)
        rp, st, ln, pl = (t.cpu().tolist() for t in (self.row_ptr, self.run_start, self.run_len, self.run_pool))
        for i in range(self.num_tiles_q):
            for r in range(rp[i], rp[i + 1]):
                kinds[i, st[r]:st[r] + ln[r]] = FULL if pl[r] < 0 else PARTIAL
        return kinds

    def stats(self) -> dict[str, int]:
        kinds = self.tile_kinds()
        return {"full": int((kinds == FULL).sum()), "partial": int((kinds == PARTIAL).sum()),
                "empty": int((kinds == EMPTY).sum()), "pool": int(self.pool.shape[0]),
                "runs": int(self.run_start.shape[0]), "nbytes": self.nbytes}

    def dense(self) -> torch.Tensor:
        """Materialise the bool [seqlen_q, seqlen_k] mask (tests only: O(S^2) memory)."""
        tq, tk = self.tile_q, self.tile_k
        out = torch.zeros(self.num_tiles_q * tq, self.num_tiles_k * tk, dtype=torch.bool)
        rp, st, ln, pl = (t.cpu().tolist() for t in (self.row_ptr, self.run_start, self.run_len, self.run_pool))
        pool = self.pool.cpu()
        for i in range(self.num_tiles_q):
            for r in range(rp[i], rp[i + 1]):
                for j in range(st[r], st[r] + ln[r]):
                    out[i * tq:(i + 1) * tq, j * tk:(j + 1) * tk] = True if pl[r] < 0 else pool[pl[r]]
        return out[:self.seqlen_q, :self.seqlen_k].contiguous()

    def __repr__(self) -> str:
        return (f"TileMask({self.seqlen_q}x{self.seqlen_k}, tile={self.tile_q}x{self.tile_k}, "
                f"runs={self.run_start.shape[0]}, pool={self.pool.shape[0]}, nbytes={self.nbytes})")
