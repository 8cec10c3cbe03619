"""TileMask: dense() is exactly the intended mask, tiles are classified right, storage is tiny."""

import pytest
import torch

from ascend_ext import ops
from ascend_ext.ops import TileMask

from .impls import DEVICE, require_tensor_descriptors, runnable
from .naive import allowed, assert_close, assert_lse_close, attention_f64, cu, randn

SIZES = [(1, 1), (16, 16), (100, 100), (37, 90), (90, 37), (128, 128), (129, 257)]
TILES = [(16, 16), (32, 64), (64, 32)]


def _doc_dense(offsets):
    total = offsets[-1]
    doc = torch.zeros(total, dtype=torch.long)
    for d, (a, b) in enumerate(zip(offsets, offsets[1:])):
        doc[a:b] = d
    return doc[:, None] == doc[None, :]


def _check_classification(tm: TileMask, dense: torch.Tensor):
    kinds = tm.tile_kinds()
    for i in range(tm.num_tiles_q):
        for j in range(tm.num_tiles_k):
            block = dense[i * tm.tile_q:(i + 1) * tm.tile_q, j * tm.tile_k:(j + 1) * tm.tile_k]
            expected = 0 if not block.any() else (1 if block.all() else 2)
            assert kinds[i, j] == expected, (i, j)
    pool = tm.pool
    assert len({bytes(t.flatten().numpy()) for t in pool}) == pool.shape[0], "pool not deduplicated"


@pytest.mark.parametrize("sq,sk", SIZES)
@pytest.mark.parametrize("tile", TILES)
def test_causal_and_window_dense(sq, sk, tile):
    for window, tm in (((-1, 0), TileMask.causal(sq, sk, tile=tile)),
                       ((5, 0), TileMask.sliding_window(sq, sk, 5, 0, tile=tile)),
                       ((3, 7), TileMask.sliding_window(sq, sk, 3, 7, tile=tile)),
                       ((-1, 2), TileMask.sliding_window(sq, sk, -1, 2, tile=tile))):
        expected = allowed(sq, sk, False, window)
        assert torch.equal(tm.dense(), expected), window
        _check_classification(tm, expected)


@pytest.mark.parametrize("offsets", [[0, 5], [0, 3, 3, 40, 41, 100], [0, 64, 128, 200], [0]])
@pytest.mark.parametrize("tile", TILES)
def test_document_dense(offsets, tile):
    tm = TileMask.document(torch.tensor(offsets, dtype=torch.int32), tile=tile)
    expected = _doc_dense(offsets)
    assert torch.equal(tm.dense(), expected)
    _check_classification(tm, expected)


@pytest.mark.parametrize("sq,sk", [(1, 1), (50, 70), (64, 64), (100, 33)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.7, 1.0])
def test_from_dense_random(sq, sk, density, rng):
    dense = torch.rand(sq, sk, generator=rng) < density
    dense[: sq // 3] = False              # rows that see no key
    dense[:, -5:] |= density > 0.5
    tm = TileMask.from_dense(dense, tile=(16, 32))
    assert torch.equal(tm.dense(), dense)
    _check_classification(tm, dense)


def test_causal_pool_is_tiny_and_deduplicated():
    tm = TileMask.causal(1024, 1024, tile=(128, 128))
    stats = tm.stats()
    assert stats["pool"] == 1 and stats["partial"] == 8 and stats["full"] == 28 and stats["empty"] == 28


@pytest.mark.parametrize("builder", [
    lambda: TileMask.causal(131072, 131072),
    lambda: TileMask.sliding_window(131072, 131072, 4096, 0),
    lambda: TileMask.document(torch.tensor([0, 1000, 17000, 50000, 50001, 131072], dtype=torch.int32)),
])
def test_128k_masks_stay_under_1mib(builder):
    tm = builder()
    assert tm.nbytes <= 1 << 20, tm
    assert tm.num_tiles_q == 1024


def test_bad_tile_mask_arguments():
    with pytest.raises(ValueError, match="tile_q must be a power of two"):
        TileMask.causal(10, 10, tile=(24, 16))
    with pytest.raises(ValueError, match="non-decreasing"):
        TileMask.document([0, 5, 3])
    with pytest.raises(TypeError, match="torch.bool"):
        TileMask.from_dense(torch.ones(4, 4))
    with pytest.raises(ValueError, match="seqlen_q"):
        TileMask.causal(-1, 4)


MASKS = {
    "causal": lambda s: (TileMask.causal(s, s, tile=(16, 16)), allowed(s, s, True, (-1, -1))),
    "documents": lambda s: (TileMask.document([0, 7, 30, s], tile=(16, 32)), _doc_dense([0, 7, 30, s])),
    "random": lambda s: (None, None),
}


def _check_each_sequence(out, lse, q, k, v, visible, dtype):
    """Sequences of len(visible) tokens packed back to back, one mask for all: each against float64."""
    s = visible.shape[0]
    for start in range(0, q.shape[0], s):
        rows = slice(start, start + s)
        ref, ref_lse = attention_f64(q[rows].cpu(), k[rows].cpu(), v[rows].cpu(), q.shape[2] ** -0.5, visible)
        assert_close(out[rows], ref, dtype)
        assert_lse_close(lse[:, rows], ref_lse, dtype)


@pytest.mark.parametrize("impl", runnable("flash_attn_varlen", mask=True))
@pytest.mark.parametrize("kind", ["documents", "random", "window+documents"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attn_with_tile_mask(impl, kind, dtype, rng):
    s, hq, hkv, d = 70, 4, 2, 64
    if kind == "random":
        dense = torch.rand(s, s, generator=rng) < 0.3
        dense[3] = False                    # a row with no visible key
        tm = TileMask.from_dense(dense, tile=(16, 16))
        causal, window = False, (-1, -1)
    else:
        offsets = [0, 7, 30, 31, s]
        dense = _doc_dense(offsets)
        tm = TileMask.document(offsets, tile=(16, 32))
        causal, window = (True, (9, 0)) if kind == "window+documents" else (True, (-1, -1))
    batch = 2                               # the mask applies to every sequence
    q = randn((batch * s, hq, d), dtype, rng, DEVICE)
    k = randn((batch * s, hkv, d), dtype, rng, DEVICE)
    v = randn((batch * s, hkv, d), dtype, rng, DEVICE)
    with ops.use_impl(attention=impl):
        out, lse = ops.flash_attn_varlen(q, k, v, cu([s] * batch, DEVICE), cu([s] * batch, DEVICE), s, s,
                                         causal=causal, window_size=window, mask=tm, return_lse=True)
    _check_each_sequence(out, lse, q, k, v, allowed(s, s, causal, window, dense), dtype)


def _shuffled_runs(tm: TileMask, rng) -> TileMask:
    """The same mask with each row's runs in random order (full runs no longer consecutive)."""
    order = []
    rp = tm.row_ptr.tolist()
    for i in range(tm.num_tiles_q):
        order += (rp[i] + torch.randperm(rp[i + 1] - rp[i], generator=rng)).tolist()
    order = torch.tensor(order, dtype=torch.long)
    return TileMask(tm.seqlen_q, tm.seqlen_k, tm.tile_q, tm.tile_k, tm.row_ptr, tm.run_start[order],
                    tm.run_len[order], tm.run_pool[order], tm.pool, kind=tm.kind)


@pytest.mark.skipif("triton" not in runnable("flash_attn_varlen", mask=True), reason="Triton cannot run here")
@pytest.mark.parametrize("mask_tma", [False, True])
@pytest.mark.parametrize("walk", [True, False])
@pytest.mark.parametrize("kind", ["window+documents", "random", "random shuffled"])
def test_triton_tile_mask_run_paths(walk, kind, mask_tma, rng):
    """The run/pool walk of the Triton kernel (forced also for document masks, which
    otherwise run from row intervals): full runs walked in one loop or run by run; runs in
    any order (the walk falls back to run by run when a row's full runs are not consecutive).
    mask_tma: the walk's tiles through tensor descriptors (Hopper configs with TMA; opt-in), also
    under an interpreter that runs descriptor loads (triton 3.9's: the walk's descriptor
    coordinates checked on CPU)."""
    import importlib

    from ascend_ext.kernels.triton import flash_attention as triton_flash

    if mask_tma:
        require_tensor_descriptors()
    configs = importlib.import_module(f"ascend_ext.backends.{DEVICE}.configs")
    base = configs.flash_config(torch.device(DEVICE), 64, torch.bfloat16)
    s, hq, hkv, d, dtype = 75, 4, 2, 64, torch.bfloat16
    if kind == "window+documents":
        offsets = [0, 7, 30, 31, s]
        tm, dense, causal, window = TileMask.document(offsets, tile=(16, 16)), _doc_dense(offsets), True, (20, 0)
    else:
        dense = torch.rand(s, s, generator=rng) < 0.4
        dense[:, 16:32] = True                  # full tiles 1 and 3, partial tiles around them
        dense[:, 48:64] = True
        dense[5] = False
        tm, causal, window = TileMask.from_dense(dense, tile=(16, 16)), True, (-1, 0)
        if kind == "random shuffled":
            tm = _shuffled_runs(tm, rng)
    # two sequences (the second starts at row 75, inside a tile) and K / V as views of one fused
    # [tokens, 2 Hkv, D] tensor (rows strided: the descriptors' row stride is not Hkv * D)
    batch = 2
    q = randn((batch * s, hq, d), dtype, rng, DEVICE)
    kv = randn((batch * s, 2 * hkv, d), dtype, rng, DEVICE)
    k, v = kv[:, :hkv], kv[:, hkv:]
    cfg = dict(base, TILE_RUNS=True, WALK=walk, MASK_TMA=mask_tma, TMA=base.get("TMA", False) or mask_tma)
    out = torch.full_like(q, float("nan"))
    lse = triton_flash.flash_attn_varlen(q, k, v, cu([s] * batch, DEVICE), cu([s] * batch, DEVICE), s, s,
                                         softmax_scale=d ** -0.5, window=window, mask=tm.to(DEVICE), softcap=0.0,
                                         out=out, return_lse=True, config=cfg, configs=configs)
    _check_each_sequence(out, lse, q, k, v, allowed(s, s, causal, window, dense), dtype)


@pytest.mark.skipif("triton" not in runnable("flash_attn_varlen", mask=True), reason="Triton cannot run here")
def test_triton_tile_mask_many_runs(rng):
    """Rows of more than 32 full runs (the run scan works in chunks of 32), plus a partial
    run: every other key tile visible, and one tile column with a ragged element mask."""
    sq, sk, d, dtype = 20, 16 * 68, 16, torch.float32
    cols = torch.arange(sk)
    dense = ((cols // 16) % 2 == 0)[None, :].expand(sq, sk).clone()
    dense[:, 16 * 5:16 * 6] = torch.rand(sq, 16, generator=rng) < 0.5
    tm = TileMask.from_dense(dense, tile=(16, 16))
    assert int((tm.row_ptr[1:] - tm.row_ptr[:-1]).max()) > 33
    q = randn((sq, 1, d), dtype, rng, DEVICE)
    k, v = (randn((sk, 1, d), dtype, rng, DEVICE) for _ in range(2))
    with ops.use_impl(attention="triton"):
        out, lse = ops.flash_attn_varlen(q, k, v, cu([sq], DEVICE), cu([sk], DEVICE), sq, sk, mask=tm,
                                         return_lse=True)
    ref, ref_lse = attention_f64(q.cpu(), k.cpu(), v.cpu(), d ** -0.5, dense)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


def test_cuda_tiles_for_narrow_windows(monkeypatch):
    """Hopper's flash table: a sliding window of <= 1024 keys, or causal sequences of <= 1024
    keys, take the short-span tiles (64 x 64, 4 warps); wider windows, longer causal
    sequences, non-causal attention and other GPUs the regular entry."""
    from ascend_ext.backends.cuda import configs

    monkeypatch.setattr(configs, "_capability", lambda device: (9, 0))
    dev = torch.device("cuda")
    short = configs.flash_config(dev, 128, torch.bfloat16, window_left=512)
    assert (short["SUB_M"], short["BLOCK_N"], short["num_warps"]) == (64, 64, 4)
    for left in (-1, 4096):
        assert configs.flash_config(dev, 128, torch.bfloat16, window_left=left)["SUB_M"] == 128
    assert configs.flash_config(dev, 128, torch.bfloat16, causal_keys=1024) == short
    assert configs.flash_config(dev, 128, torch.bfloat16, causal_keys=2048)["SUB_M"] == 128
    assert configs.flash_config(dev, 128, torch.bfloat16, window_left=4096, causal_keys=512)["SUB_M"] == 128
    assert configs.flash_config(dev, 64, torch.bfloat16, window_left=512)["SUB_M"] == 128   # d64: not measured
    d64_short = configs.flash_config(dev, 64, torch.bfloat16, causal_keys=1024)      # d64 short causal: measured
    assert (d64_short["SUB_M"], d64_short["BLOCK_N"], d64_short["num_warps"]) == (64, 64, 4)
    assert configs.flash_config(dev, 64, torch.bfloat16, causal_keys=2048)["SUB_M"] == 128
    monkeypatch.setattr(configs, "_capability", lambda device: (8, 0))
    assert configs.flash_config(dev, 128, torch.bfloat16, window_left=512) == configs.flash_config(dev, 128, torch.bfloat16)


def test_cuda_paged_tiles_for_few_long_sequences(monkeypatch):
    """Hopper's paged table: 128-key tiles when sequences x KV heads leave >= 16 SMs per program
    and the longest context has >= 4k keys (B = 1 long decode), 64-key tiles otherwise; never
    for 8-bit caches, head dims > 128 or other GPUs."""
    from ascend_ext.backends.cuda import configs

    monkeypatch.setattr(configs, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(configs, "_sm_count", lambda device: 132)
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    assert configs.paged_config(dev, 128, bf16)["BLOCK_N"] == 64
    assert configs.paged_config(dev, 128, bf16, batch_kv_heads=8, max_keys=16384)["BLOCK_N"] == 128
    assert configs.paged_config(dev, 64, bf16, batch_kv_heads=1, max_keys=131072)["BLOCK_N"] == 128
    for heads, keys in ((8, 2048), (9, 16384), (64, 32768)):
        assert configs.paged_config(dev, 128, bf16, batch_kv_heads=heads, max_keys=keys)["BLOCK_N"] == 64
    assert configs.paged_config(dev, 128, bf16, torch.float8_e4m3fn, batch_kv_heads=8, max_keys=16384)["BLOCK_N"] == 64
    assert configs.paged_config(dev, 256, bf16, batch_kv_heads=8, max_keys=16384)["BLOCK_N"] == 32
    monkeypatch.setattr(configs, "_capability", lambda device: (8, 0))
    assert configs.paged_config(dev, 128, bf16, batch_kv_heads=8, max_keys=16384)["BLOCK_N"] == 32


def test_cuda_paged_split_counts(monkeypatch):
    """Hopper's split counts for 32 q / 8 KV heads (batch x 8 programs before splitting): one wave
    of 4 resident programs per SM, then one-tile splits up to one program per SM (B = 1 1k: 16
    one-tile splits, not 8 of two tiles; 4k: 128-key tiles, 17 splits of which 16 hold keys);
    8-bit caches keep their two-wave rule (FILL_SMS off)."""
    from ascend_ext.backends.cuda import configs
    from ascend_ext.kernels.triton import paged_attention as triton_paged

    monkeypatch.setattr(configs, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(configs, "_sm_count", lambda device: 132)
    monkeypatch.setattr(triton_paged, "_sm_count", lambda index: 132)
    dev = torch.device("cuda", 0)

    def splits(batch, keys, cache=None):
        cfg = configs.paged_config(dev, 128, torch.bfloat16, cache, batch_kv_heads=batch * 8, max_keys=keys)
        return triton_paged.config_splits(dev, cfg, batch * 8, keys)

    expected = {(1, 1024): 16, (1, 2048): 17, (1, 4096): 17, (1, 8192): 32, (1, 16384): 32, (1, 32768): 32, (8, 1024): 8, (8, 4096): 8,
                (8, 16384): 8, (16, 4096): 4, (32, 4096): 2, (64, 4096): 1, (128, 16384): 1, (1, 200): 1}
    assert {shape: splits(*shape) for shape in expected} == expected
    assert splits(1, 1024, torch.float8_e4m3fn) == 8 and splits(8, 16384, torch.float8_e4m3fn) == 16
    # chunks of 8 tokens x 4 heads: 32-row tiles, with the older rule (2 per SM, >= 2 tiles)
    chunk = triton_paged.chunk_config(configs.paged_config(dev, 128, torch.bfloat16, batch_kv_heads=8,
                                                           max_keys=1024), 8, 4)
    assert chunk["BLOCK_M"] == 32 and triton_paged.config_splits(dev, chunk, 8, 1024) == 8
    assert triton_paged.chunk_config(configs.paged_config(dev, 128, torch.bfloat16), 1, 4)["BLOCK_M"] == 16


def test_backend_config_tables_share_one_signature():
    """The Triton launchers call whichever backend's configs module with the same keywords, so
    every module's flash_config / paged_config / mla_plan takes the same parameters."""
    import importlib
    import inspect

    modules = [importlib.import_module(f"ascend_ext.backends.{name}.configs") for name in ("cpu", "cuda", "npu")]
    for fn in ("flash_config", "paged_config", "mla_plan"):
        params = {m.__name__: list(inspect.signature(getattr(m, fn)).parameters) for m in modules}
        assert len({tuple(p) for p in params.values()}) == 1, f"{fn}: {params}"
