"""MLA decode: absorbed form equals the explicit per-head computation; every
implementation matches float64; cache writes; bad input."""

import functools
import importlib
import importlib.util
import itertools

import pytest
import torch

from ascend_ext import ops

from .impls import DEVICE, require_tensor_descriptors, runnable
from .naive import allowed, assert_close, assert_lse_close, attention_f64, randn


def _latent_cache(lengths, width, block_size, dtype, rng, extra_blocks=2):
    """Per-sequence latent rows scattered into a NaN-poisoned cache with a permuted table."""
    rows = [randn((n, width), dtype, rng) for n in lengths]
    needed = [-(-n // block_size) for n in lengths]
    total = sum(needed) + extra_blocks
    perm = torch.randperm(total, generator=rng).tolist()
    cache = torch.full((total, block_size, width), float("nan"), dtype=dtype)
    table = torch.full((len(lengths), max(needed + [1]) + 1), -1, dtype=torch.int32)
    cursor = 0
    for b, r in enumerate(rows):
        for j in range(needed[b]):
            table[b, j] = perm[cursor]
            part = r[j * block_size:(j + 1) * block_size]
            cache[perm[cursor], :part.shape[0]] = part
            cursor += 1
    return rows, cache, table, torch.tensor(lengths, dtype=torch.int32)


def _configs(device=DEVICE):
    """The tile-config module the backend of ``device`` binds to the Triton kernels."""
    return importlib.import_module(f"ascend_ext.backends.{device}.configs")


def _reference(q, rows, rank, scale, causal):
    outs, lses = [], []
    for b, latent in enumerate(rows):
        s_q = q.shape[1]
        ok = allowed(s_q, latent.shape[0], causal, (-1, -1))
        o, l = attention_f64(q[b].cpu(), latent[:, None, :], latent[:, None, :rank], scale, ok)
        outs.append(o)
        lses.append(l)
    lse = torch.stack(lses)                              # [B, Hq, s_q]
    return torch.stack(outs), lse.permute(1, 0, 2).reshape(lse.shape[1], -1)   # lse [Hq, B * s_q]


CASES = []
for n, (hq, s_q, block_size, dtype) in enumerate(itertools.product(
        (1, 16, 128), (1, 2), (16, 64), (torch.bfloat16, torch.float16, torch.float32))):
    lengths = [[0, 1, 17, 100], [5, 64, 65], [130, 3]][n % 3]
    if hq == 128 and dtype == torch.float32:
        continue   # covered by the other dtypes; keeps the interpreter run short
    CASES.append(pytest.param(hq, s_q, block_size, dtype, lengths,
                              id=f"h{hq}-sq{s_q}-bs{block_size}-{str(dtype)[6:]}-n{max(lengths)}"))
# s_q 3-4 (MTP / speculative): 16 heads x 4 rows = 64 packed rows, the compute path on GPUs
for hq, s_q, block_size, dtype, lengths in ((16, 4, 64, torch.bfloat16, [0, 4, 150]),
                                            (16, 3, 16, torch.float16, [3, 81]),
                                            (4, 4, 16, torch.bfloat16, [5, 64, 0, 33])):
    CASES.append(pytest.param(hq, s_q, block_size, dtype, lengths,
                              id=f"h{hq}-sq{s_q}-bs{block_size}-{str(dtype)[6:]}-n{max(lengths)}"))


@pytest.mark.parametrize("impl", runnable("mla_decode"))
@pytest.mark.parametrize("hq,s_q,block_size,dtype,lengths", CASES)
def test_mla_decode_matches_float64(impl, hq, s_q, block_size, dtype, lengths, rng):
    rank, rope = 512, 64
    rows, cache, table, lens = _latent_cache(lengths, rank + rope, block_size, dtype, rng)
    q = randn((len(lengths), s_q, hq, rank + rope), dtype, rng, DEVICE)
    scale = (128 + 64) ** -0.5
    out = torch.full((len(lengths), s_q, hq, rank), float("nan"), dtype=dtype, device=DEVICE)
    with ops.use_impl(mla=impl):
        _, lse = ops.mla_decode(q, cache.to(DEVICE), table.to(DEVICE), lens.to(DEVICE), kv_lora_rank=rank,
                                softmax_scale=scale, return_lse=True, out=out)
    ref, ref_lse = _reference(q, rows, rank, scale, causal=True)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)


@pytest.mark.parametrize("impl", runnable("mla_decode"))
@pytest.mark.parametrize("causal", [True, False])
def test_mla_decode_small_rank_and_odd_rope(impl, causal, rng):
    """Widths that are not powers of two (rank 96, rope 40) and non-causal multi-token."""
    rank, rope, s_q, hq = 96, 40, 3, 4
    rows, cache, table, lens = _latent_cache([2, 33, 50], rank + rope, 16, torch.float32, rng)
    q = randn((3, s_q, hq, rank + rope), torch.float32, rng, DEVICE)
    with ops.use_impl(mla=impl):
        out, lse = ops.mla_decode(q, cache.to(DEVICE), table.to(DEVICE), lens.to(DEVICE), kv_lora_rank=rank,
                                  softmax_scale=0.1, causal=causal, return_lse=True)
    ref, ref_lse = _reference(q, rows, rank, 0.1, causal)
    assert_close(out, ref, torch.float32)
    assert_lse_close(lse, ref_lse, torch.float32)


@pytest.mark.skipif("triton" not in runnable("mla_decode"), reason="Triton cannot run here")
@pytest.mark.parametrize("num_splits", [2, 5])
def test_mla_triton_split_kv(num_splits, rng):
    from ascend_ext.kernels.triton import mla_decode as triton_decode

    rank, rope, hq, s_q = 512, 64, 16, 2
    rows, cache, table, lens = _latent_cache([200, 1, 77], rank + rope, 16, torch.bfloat16, rng)
    q = randn((3, s_q, hq, rank + rope), torch.bfloat16, rng, DEVICE)
    out = torch.empty((3, s_q, hq, rank), dtype=torch.bfloat16, device=DEVICE)
    lse = triton_decode.mla_decode(q, cache.to(DEVICE), table.to(DEVICE), lens.to(DEVICE), kv_lora_rank=rank,
                                   softmax_scale=0.07, causal=True, out=out, return_lse=True, num_splits=num_splits,
                                   configs=_configs())
    ref, ref_lse = _reference(q, rows, rank, 0.07, True)
    assert_close(out, ref, torch.bfloat16)
    assert_lse_close(lse, ref_lse, torch.bfloat16)


@pytest.mark.parametrize("impl", runnable("mla_decode"))
@pytest.mark.parametrize("hq,s_q,block_size,lengths,q_dtype", [(16, 1, 64, [0, 1, 130, 64], torch.bfloat16),
                                                               (8, 4, 16, [4, 77, 0], torch.float16),
                                                               (128, 2, 16, [3, 40], torch.bfloat16)])
def test_mla_decode_fp8_cache(impl, hq, s_q, block_size, lengths, q_dtype, rng):
    """e4m3 latent cache with a per-tensor scale equals float64 attention over the dequantised
    rows (bfloat16 or float16 queries)."""
    if impl == "triton" and importlib.util.find_spec("triton.backends.ascend") is not None:
        pytest.skip("triton-ascend 3.2 has no fp8 ('[fp8, fp64] is unsupported on Ascend for now'): "
                    "the FP8 MLA cache cannot run through Triton on Ascend")
    rank, rope, kv_scale = 512, 64, 0.03
    rows, cache, table, lens = _latent_cache(lengths, rank + rope, block_size, torch.float32, rng)
    if DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9:
        fp8 = (cache / kv_scale).to(torch.float8_e4m3fn)          # NaN slots stay NaN
    else:
        pytest.skip("float8 e4m3 needs compute capability >= 8.9")
    flat_rows = []
    for b, n in enumerate(lengths):   # the rows the kernel sees: dequantised e4m3 values
        blocks = table[b, :-(-n // block_size)].long()
        flat_rows.append((fp8[blocks].float() * kv_scale).flatten(0, 1)[:n])
    q = randn((len(lengths), s_q, hq, rank + rope), q_dtype, rng, DEVICE)
    out = torch.full((len(lengths), s_q, hq, rank), float("nan"), dtype=q_dtype, device=DEVICE)
    with ops.use_impl(mla=impl):
        _, lse = ops.mla_decode(q, fp8.to(DEVICE), table.to(DEVICE), lens.to(DEVICE), kv_lora_rank=rank,
                                softmax_scale=0.06, return_lse=True, out=out, kv_scale=kv_scale)
    ref, ref_lse = _reference(q, flat_rows, rank, 0.06, causal=True)
    assert_close(out, ref, q_dtype)
    assert_lse_close(lse, ref_lse, q_dtype)


@pytest.mark.skipif("triton" not in runnable("mla_decode"), reason="Triton cannot run here")
@pytest.mark.parametrize("config", [dict(BLOCK_M=32, BLOCK_N=32, MASK_N=16), dict(BLOCK_M=16, BLOCK_N=64, MASK_N=32),
                                    dict(BLOCK_M=16, BLOCK_N=64, MASK_N=16, TRANS=True),
                                    dict(BLOCK_M=32, BLOCK_N=32, MASK_N=32, TRANS=True),
                                    dict(BLOCK_M=32, BLOCK_N=32, MASK_N=16, TMA=True),
                                    dict(BLOCK_M=16, BLOCK_N=64, MASK_N=32, TRANS=True, TMA=True)])
def test_mla_triton_tiles(config, rng):
    """Other tiles than the device default (the GPU paths' shapes, row tiles spanning positions),
    row-major and transposed (keys x rows) MMA formulations, and the Hopper tensor-descriptor
    loads (compiled on sm90; under an interpreter that runs descriptor loads)."""
    from ascend_ext.kernels.triton import mla_decode as triton_decode

    if config.get("TMA"):
        require_tensor_descriptors()

    rank, rope, hq, s_q = 512, 64, 8, 3
    rows, cache, table, lens = _latent_cache([0, 130, 7, 64], rank + rope, 64, torch.bfloat16, rng)
    q = randn((4, s_q, hq, rank + rope), torch.bfloat16, rng, DEVICE)
    out = torch.full((4, s_q, hq, rank), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    lse = triton_decode.mla_decode(q, cache.to(DEVICE), table.to(DEVICE), lens.to(DEVICE), kv_lora_rank=rank,
                                   softmax_scale=0.07, causal=True, out=out, return_lse=True, config=config,
                                   num_splits=2, configs=_configs())
    ref, ref_lse = _reference(q, rows, rank, 0.07, True)
    assert_close(out, ref, torch.bfloat16)
    assert_lse_close(lse, ref_lse, torch.bfloat16)


def test_mla_plan_paths_and_splits():
    """Path from the packed row count; splits from the device's units (shapes only, graph-safe)."""
    from ascend_ext.backends.cuda.configs import mla_device_model
    from ascend_ext.kernels.triton.mla_plan import choose_path, choose_splits

    h100 = mla_device_model("sm90", 132)

    assert choose_path(128, 1, torch.bfloat16) == "compute"
    assert choose_path(16, 4, torch.bfloat16) == "compute"
    assert choose_path(16, 2, torch.bfloat16) == "memory"
    assert choose_path(128, 1, torch.float32) == "memory"
    common = dict(path="memory", block_m=16, block_n=64, width=576, rank=512, kv_bytes=2)
    # one long sequence on 132 units: many splits; a full device of programs: none
    assert choose_splits(h100, programs=1, max_len=32768, out_rows=16, **common) >= 32
    assert choose_splits(h100, programs=256, max_len=4096, out_rows=4096, **common) == 1
    # each split keeps >= 2 key tiles
    assert choose_splits(h100, programs=1, max_len=256, out_rows=16, **common) <= 2


def test_mla_plan_compute_splits_fill_one_wave():
    """Hopper's compute path (Hq 128): at least 2 splits below one wave of programs, doubled up to
    one wave (the H100 grid of 2026-12-07 in mla_plan.choose_splits); a capacity-sized table
    (vLLM: max_model_len) plans like its contexts' size here."""
    from ascend_ext.backends.cuda.configs import _MLA_SM90, mla_device_model
    from ascend_ext.kernels.triton.mla_plan import build_plan

    def splits(batch, s_q, max_len):
        return build_plan(_MLA_SM90, mla_device_model("sm90", 132), tma=True, batch=batch, heads=128, s_q=s_q,
                          max_len=max_len, rank=512, rope=64, cache_block=64, q_dtype=torch.bfloat16,
                          kv_dtype=torch.bfloat16)["num_splits"]

    measured_best = {(32, 1, 4096): 2, (32, 1, 16384): 2, (32, 1, 32768): 2, (16, 1, 16384): 4, (64, 1, 4096): 2,
                     (32, 2, 4096): 2, (32, 2, 16384): 2, (16, 2, 4096): 2}
    assert {shape: splits(*shape) for shape in measured_best} == measured_best
    assert splits(128, 1, 4096) == 1 and splits(64, 2, 4096) == 1   # a wave or more already


def test_mla_plan_memory32_tile():
    """Hopper's table: 17-32 packed rows of 16-bit q and cache take one transposed 32-row tile;
    16 rows, FP8 caches and fp32 queries keep the row-major memory tiles."""
    from ascend_ext.backends.cuda.configs import _MLA_SM90, mla_device_model
    from ascend_ext.kernels.triton.mla_plan import build_plan

    plan = functools.partial(build_plan, _MLA_SM90, mla_device_model("sm90", 132), tma=True, batch=32,
                             max_len=4096, rank=512, rope=64, cache_block=64)
    pair = plan(heads=16, s_q=2, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16)
    assert (pair["path"], pair["BLOCK_M"], pair["TRANS"], pair["row_tiles"]) == ("memory", 32, True, 1)
    assert not plan(heads=16, s_q=1, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16)["TRANS"]
    assert not plan(heads=16, s_q=2, q_dtype=torch.bfloat16, kv_dtype=torch.float8_e4m3fn)["TRANS"]
    assert not plan(heads=16, s_q=2, q_dtype=torch.float32, kv_dtype=torch.float32)["TRANS"]
    assert plan(heads=128, s_q=1, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16)["path"] == "compute"
    # FP8 caches on the compute path take three stages (fp8 boxes are half the bytes)
    assert plan(heads=128, s_q=1, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16)["num_stages"] == 2
    assert plan(heads=128, s_q=1, q_dtype=torch.bfloat16, kv_dtype=torch.float8_e4m3fn)["num_stages"] == 3


@pytest.mark.parametrize("device", ["cpu", "npu"])
def test_mla_plan_of_each_backend(device):
    """The configs a backend binds plan both paths; no TMA off Hopper; overrides win."""
    shape = dict(batch=4, s_q=1, max_len=4096, rank=512, rope=64, cache_block=64, kv_dtype=torch.bfloat16)
    plan_of = functools.partial(_configs(device).mla_plan, torch.device("cpu"))   # no npu device type here
    compute = plan_of(heads=128, q_dtype=torch.bfloat16, **shape)
    memory = plan_of(heads=16, q_dtype=torch.bfloat16, **shape)
    assert (compute["path"], memory["path"]) == ("compute", "memory")
    assert not compute["TMA"] and not memory["TMA"]
    assert compute["row_tiles"] * compute["BLOCK_M"] >= 128 and compute["num_splits"] >= 1
    assert memory["EVEN"] and memory["MASK_N"] <= memory["BLOCK_N"]
    forced = plan_of(heads=16, q_dtype=torch.bfloat16, config=dict(BLOCK_N=32), num_splits=3, **shape)
    assert (forced["BLOCK_N"], forced["num_splits"]) == (32, 3)


def test_absorbed_equals_explicit_mla(rng):
    """Decompress K/V per head with W_UK / W_UV and run plain attention: the absorbed
    decode followed by W_UV gives the same output."""
    hq, nope, rope, v_dim, rank, s_q = 4, 32, 16, 24, 64, 2
    lengths = [9, 40]
    scale = (nope + rope) ** -0.5
    w_uk = randn((hq, nope, rank), torch.float64, rng, scale=0.2)
    w_uv = randn((hq, v_dim, rank), torch.float64, rng, scale=0.2)
    latents = [randn((n, rank), torch.float64, rng) for n in lengths]
    k_pes = [randn((n, rope), torch.float64, rng) for n in lengths]
    q_nope = randn((len(lengths), s_q, hq, nope), torch.float64, rng)
    q_pe = randn((len(lengths), s_q, hq, rope), torch.float64, rng)
    # absorbed: q_lat = q_nope @ W_UK, cache rows = [c_kv, k_pe]
    q_abs = torch.cat([torch.einsum("bshn,hnr->bshr", q_nope, w_uk), q_pe], dim=-1).float()
    rows = [torch.cat([c, p], dim=-1).float() for c, p in zip(latents, k_pes)]
    bs = 8
    needed = [-(-n // bs) for n in lengths]
    cache = torch.full((sum(needed), bs, rank + rope), float("nan"))
    table = torch.zeros(len(lengths), max(needed), dtype=torch.int32)
    blk = 0
    for b, r in enumerate(rows):
        for j in range(needed[b]):
            part = r[j * bs:(j + 1) * bs]
            cache[blk, :part.shape[0]] = part
            table[b, j] = blk
            blk += 1
    out_lat = ops.mla_decode(q_abs, cache, table, torch.tensor(lengths, dtype=torch.int32), kv_lora_rank=rank,
                             softmax_scale=scale)
    absorbed = torch.einsum("bshr,hvr->bshv", out_lat.double(), w_uv)
    for b, n in enumerate(lengths):
        k = torch.cat([torch.einsum("lr,hnr->lhn", latents[b], w_uk),
                       k_pes[b][:, None, :].expand(n, hq, rope)], dim=-1)
        v = torch.einsum("lr,hvr->lhv", latents[b], w_uv)
        qf = torch.cat([q_nope[b], q_pe[b]], dim=-1)
        explicit, _ = attention_f64(qf, k, v, scale, allowed(s_q, n, True, (-1, -1)))
        torch.testing.assert_close(absorbed[b], explicit, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("impl", runnable("concat_and_cache_mla"))
def test_concat_and_cache_mla(impl, rng):
    blocks, bs, rank, rope, n = 4, 16, 64, 16, 20
    cache = torch.full((blocks, bs, rank + rope), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    kv_c = randn((n + 2, rank), torch.float32, rng, DEVICE)
    k_pe = randn((n + 2, rope), torch.float32, rng, DEVICE)
    slots = torch.randperm(blocks * bs, generator=rng)[:n]
    slots[3] = -1
    with ops.use_impl(mla=impl):
        ops.concat_and_cache_mla(kv_c, k_pe, cache, slots.to(DEVICE))
    flat = cache.view(-1, rank + rope).cpu()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat[s], torch.cat([kv_c[t], k_pe[t]]).to(torch.bfloat16).cpu())
    assert int(torch.isnan(flat.float()).all(1).sum()) == blocks * bs - (n - 1)


def _mla_args(**over):
    args = dict(q=torch.randn(2, 1, 4, 576), kv_cache=torch.randn(5, 16, 576),
                block_table=torch.tensor([[0, 1], [2, -1]], dtype=torch.int32),
                seq_lens=torch.tensor([20, 3], dtype=torch.int32))
    kw = dict(kv_lora_rank=512, softmax_scale=0.1)
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return lambda: ops.mla_decode(*args.values(), **kw)


@pytest.mark.parametrize("call,exc,message", [
    (_mla_args(kv_lora_rank=600), ValueError, "kv_lora_rank (600) is larger than the cache width (576)"),
    (_mla_args(q=torch.randn(2, 1, 4, 512)), ValueError, "q.shape[3]"),
    (_mla_args(q=torch.randn(2, 4, 576)), ValueError, "q must have 4 dimensions"),
    (_mla_args(kv_cache=torch.randn(5, 16, 576).half()), TypeError, "kv_cache must have the dtype of q"),
    (_mla_args(softmax_scale=None), TypeError, "softmax_scale is required"),
    (_mla_args(kv_lora_rank=0), ValueError, "kv_lora_rank must be > 0"),
    (_mla_args(seq_lens=torch.tensor([40, 3], dtype=torch.int32)), ValueError, "block_table has 2 columns"),
    (_mla_args(block_table=torch.tensor([[0, 7], [2, -1]], dtype=torch.int32)), ValueError, "block_table[0, 1] = 7"),
    (_mla_args(q=torch.randn(2, 0, 4, 576)), ValueError, "at least one query"),
    (_mla_args(seq_lens=torch.tensor([20], dtype=torch.int32)), ValueError, "seq_lens.shape[0]"),
    (_mla_args(kv_cache=torch.randn(5, 16, 576).to(torch.float8_e4m3fn), q=torch.randn(2, 1, 4, 576).half()),
     ValueError, "an FP8 kv_cache needs kv_scale"),
    (_mla_args(kv_cache=torch.randn(5, 16, 576).to(torch.float8_e4m3fn)), TypeError,
     "an FP8 kv_cache needs q in float16/bfloat16"),
    (_mla_args(kv_scale=0.5), ValueError, "kv_scale applies to float8_e4m3fn caches only"),
], ids=["rank>width", "q width", "q rank", "dtype", "scale", "rank0", "table narrow", "table range", "s_q 0",
        "batch", "fp8 no scale", "fp8 fp32 q", "scale no fp8"])
def test_mla_bad_input(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_concat_and_cache_mla_bad_input():
    cache = torch.zeros(4, 16, 576)
    with pytest.raises(ValueError, match="must equal the cache width"):
        ops.concat_and_cache_mla(torch.randn(3, 500), torch.randn(3, 64), cache, torch.arange(3))
    with pytest.raises(ValueError, match="past the cache capacity"):
        ops.concat_and_cache_mla(torch.randn(3, 512), torch.randn(3, 64), cache, torch.tensor([0, 1, 64]))


# ---------------------------------------------------------------- native CPU kernel specifics
native_only = pytest.mark.skipif("native" not in runnable("mla_decode"), reason="the native CPU kernel is not built")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _native_vs_float64(lengths, hq, s_q, dtype, rng, *, block_size=16, rank=512, rope=64, causal=True, scale=0.07):
    rows, cache, table, lens = _latent_cache(lengths, rank + rope, block_size, dtype, rng)
    q = randn((len(lengths), s_q, hq, rank + rope), dtype, rng)
    out = torch.full((len(lengths), s_q, hq, rank), float("nan"), dtype=dtype)
    with ops.use_impl(mla="native"):
        _, lse = ops.mla_decode(q, cache, table, lens, kv_lora_rank=rank, softmax_scale=scale, causal=causal,
                                return_lse=True, out=out)
    ref, ref_lse = _reference(q, rows, rank, scale, causal)
    assert_close(out, ref, dtype)
    assert_lse_close(lse, ref_lse, dtype)
    return out, lse


@native_only
@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lengths,s_q", [([1500], 1), ([1029], 4), ([700, 3], 2), ([0, 260], 3)])
def test_mla_native_context_splits(num_threads, dtype, lengths, s_q, threads, rng):
    """Few sequences on several threads: the contexts split (batch 1 included) and the
    splits merge through their lse; the result is the same on one thread."""
    threads(num_threads)
    _native_vs_float64(lengths, 16, s_q, dtype, rng)


@native_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_mla_native_odd_widths(dtype, causal, rng):
    """Widths that are not whole vectors (rank 96 + rope 40; rank 40 + rope 8): widened rows."""
    _native_vs_float64([2, 33, 50], 5, 3, dtype, rng, rank=96, rope=40, causal=causal, scale=0.1)
    _native_vs_float64([17, 1], 3, 1, dtype, rng, rank=40, rope=8, causal=causal, scale=0.1)


@native_only
@pytest.mark.parametrize("hq,s_q", [(128, 1), (40, 4), (3, 2)])
def test_mla_native_row_tiles(hq, s_q, rng):
    """Rows (s_q x Hq) spanning several 64-row items and partial 4-row tiles."""
    _native_vs_float64([1, 90, 31], hq, s_q, torch.bfloat16, rng, block_size=32)


@native_only
def test_mla_native_strided_q_and_out(rng):
    """q a view with padded rows and an out whose last dim is strided (copied back)."""
    rows, cache, table, lens = _latent_cache([40, 7], 576, 16, torch.bfloat16, rng)
    q = randn((2, 2, 6, 600), torch.bfloat16, rng)[:, :, 1:5, :576]
    out = torch.full((2, 2, 4, 1024), float("nan"), dtype=torch.bfloat16)[..., ::2]
    with ops.use_impl(mla="native"):
        ops.mla_decode(q, cache, table, lens, kv_lora_rank=512, softmax_scale=0.05, out=out)
    ref, _ = _reference(q, rows, 512, 0.05, True)
    assert_close(out, ref, torch.bfloat16)


@native_only
def test_mla_native_raw_op_rejects_bad_metadata():
    """Without the public op's value checks (trusted inputs) the kernel still refuses
    block ids outside the cache instead of reading past it."""
    q, cache = torch.randn(1, 1, 4, 576), torch.randn(3, 16, 576)
    table, lens = torch.tensor([[0, 9]], dtype=torch.int32), torch.tensor([20], dtype=torch.int32)
    with ops.use_impl(mla="native"), ops.trusted_inputs():
        with pytest.raises(RuntimeError, match=r"block_table\[0, 1\] = 9"):
            ops.mla_decode(q, cache, table, lens, kv_lora_rank=512, softmax_scale=0.1)
    with ops.use_impl(mla="native"), ops.trusted_inputs(), pytest.raises(RuntimeError, match="is negative"):
        ops.mla_decode(q, cache, table[:, :1], torch.tensor([-1], dtype=torch.int32), kv_lora_rank=512,
                       softmax_scale=0.1)


@pytest.mark.parametrize("impl", runnable("concat_and_cache_mla"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_concat_and_cache_mla_same_dtype_strided_rows(impl, dtype, slot_dtype, rng):
    """Rows already in the cache dtype (the vLLM path: the native copy), kv_c / k_pe views
    of one wider projection, padding slots, fewer slots than tokens."""
    blocks, bs, rank, rope, n = 5, 16, 512, 64, 37
    cache = torch.full((blocks, bs, rank + rope), float("nan"), dtype=dtype, device=DEVICE)
    projection = randn((n + 3, rank + rope + 8), dtype, rng, DEVICE)
    kv_c, k_pe = projection[:, :rank], projection[:, rank + 8:]
    slots = torch.randperm(blocks * bs, generator=rng)[:n].to(slot_dtype)
    slots[[0, 11]] = -1
    with ops.use_impl(mla=impl):
        ops.concat_and_cache_mla(kv_c, k_pe, cache, slots.to(DEVICE))
    flat = cache.view(-1, rank + rope).cpu()
    expected = torch.cat([kv_c, k_pe], dim=1).cpu()
    written = slots >= 0
    assert torch.equal(flat[slots[written].long()], expected[:n][written])
    assert int(torch.isnan(flat.float()).all(1).sum()) == blocks * bs - int(written.sum())
