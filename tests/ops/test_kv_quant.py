"""Quantised paged KV caches (FP8 e4m3 as vLLM, INT8 per-channel affine as vllm-ascend's C8):
the quantising ``reshape_and_cache`` and ``paged_attention`` dequantising on load, for every
implementation that declares the scheme, vs a float64 reference on the dequantised cache.

The quantiser and dequantiser here are written from the documented formulas, not imported."""

import pytest
import torch
import triton
import triton.language as tl

from ascend_ext import ops
from ascend_ext.kernels.triton.common import fp8_value_factors, widen
from ascend_ext.ops import _dispatch

from .impls import DEVICE
from .naive import LSE_TOL, assert_close, cu, paged_f64, randn

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _impls(kind: str) -> list[str]:
    return [name for name, impl in sorted(_dispatch.implementations("paged_attention", DEVICE).items())
            if impl.unavailable_reason(DEVICE) is None and kind in impl.supports.kv_quant]


def _native_or_skip(kind: str) -> None:
    if "native" not in _impls(kind):
        pytest.skip("the native CPU extension is not built here")


def _scale_shape(granularity: str, hkv: int, d: int):
    return {"tensor": (1,), "head": (hkv,), "channel": (hkv * d,)}[granularity]


def _broadcast(t: torch.Tensor, hkv: int, d: int) -> torch.Tensor:
    if t.numel() == hkv * d:   # per channel
        return t.double().reshape(hkv, d)
    return t.double().reshape(-1, 1).expand(hkv, d)   # per tensor / per KV head


def _quantize(x, scale, offset, dtype):
    """Stored values: fp8 = e4m3(clamp(x / s, +-448)); int8 = clamp(round(x * (1/s) + o), -128, 127)."""
    hkv, d = x.shape[-2], x.shape[-1]
    s = _broadcast(scale, hkv, d).float()
    if dtype == FP8:
        return torch.clamp(x.float() / s, -E4M3_MAX, E4M3_MAX).to(FP8)
    o = 0 if offset is None else _broadcast(offset, hkv, d).float()
    return torch.clamp(torch.round(x.float() * (1.0 / s) + o), -128, 127).to(torch.int8)


def _dequantize(stored, scale, offset):
    hkv, d = stored.shape[-2], stored.shape[-1]
    o = 0 if offset is None else _broadcast(offset, hkv, d)
    return (stored.double() - o) * _broadcast(scale, hkv, d)


def _scales(kind, granularity, hkv, d, x_absmax, rng, with_offset=False):
    """Random positive scales around absmax / range, so some values land near saturation."""
    top = E4M3_MAX if kind == "fp8" else 127.0
    shape = _scale_shape(granularity, hkv, d)
    scale = (x_absmax / top) * (0.6 + 0.8 * torch.rand(shape, generator=rng))
    offset = torch.randint(-6, 7, shape, generator=rng).float() if with_offset else None
    return scale, offset


def _poisoned(num_blocks, block_size, hkv, d, dtype):
    if dtype == FP8:
        return torch.full((num_blocks, block_size, hkv, d), float("nan")).to(FP8)
    return torch.full((num_blocks, block_size, hkv, d), 127, dtype=torch.int8)   # no NaN in int8: the extreme


def _quant_paged(keys, values, block_size, dtype, kq, vq, rng, extra_blocks=3):
    """Scatter quantised per-sequence K/V into poisoned caches with a permuted block table (-1 past the end)."""
    hkv, d, dv = keys[0].shape[1], keys[0].shape[2], values[0].shape[2]
    needed = [-(-k.shape[0] // block_size) for k in keys]
    total = sum(needed) + extra_blocks
    perm = torch.randperm(total, generator=rng).tolist()
    k_cache, v_cache = _poisoned(total, block_size, hkv, d, dtype), _poisoned(total, block_size, hkv, dv, dtype)
    table = torch.full((len(keys), max(needed + [1]) + 1), -1, dtype=torch.int32)
    cursor = 0
    for b, (k, v) in enumerate(zip(keys, values)):
        sk, sv = _quantize(k, *kq, dtype), _quantize(v, *vq, dtype)
        for j in range(needed[b]):
            blk = perm[cursor]
            cursor += 1
            table[b, j] = blk
            part = slice(j * block_size, (j + 1) * block_size)
            k_cache[blk, :sk[part].shape[0]] = sk[part]
            v_cache[blk, :sv[part].shape[0]] = sv[part]
    lens = torch.tensor([k.shape[0] for k in keys], dtype=torch.int32)
    return k_cache.to(DEVICE), v_cache.to(DEVICE), table.to(DEVICE), lens.to(DEVICE)


SCHEMES = [  # (kind, scale granularity, offsets)
    ("fp8", "tensor", False), ("fp8", "head", False),
    ("int8", "tensor", False), ("int8", "channel", False), ("int8", "channel", True), ("int8", "head", True),
]
SEQS = {   # (keys, queries) per sequence: decode, chunked prefill, odd and empty lengths
    "decode": [(37, 1), (1, 1), (130, 1), (0, 0), (16, 1)],
    "prefill": [(45, 7), (9, 9), (3, 1), (64, 16)],
}


def _cases():
    out = []
    for n, (kind, gran, offs) in enumerate(SCHEMES):
        for m, (set_name, seqs) in enumerate(SEQS.items()):
            hq, hkv = [(8, 2), (4, 4), (8, 1)][(n + m) % 3]
            d, dv = [(64, 64), (80, 48)][(n + m) % 2]
            dtype = [torch.bfloat16, torch.float16][(n + m) % 2]
            out.append(pytest.param(kind, gran, offs, seqs, hq, hkv, d, dv, dtype,
                                    id=f"{kind}-{gran}{'-offset' if offs else ''}-{set_name}-h{hq}x{hkv}-d{d}x{dv}"
                                       f"-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize("kind,gran,offs,seqs,hq,hkv,d,dv,dtype", _cases())
def test_paged_attention_on_quantised_cache(kind, gran, offs, seqs, hq, hkv, d, dv, dtype, rng):
    impls = _impls(kind)
    if not impls:
        pytest.skip(f"no paged_attention implementation here reads {kind} caches")
    cache_dtype = FP8 if kind == "fp8" else torch.int8
    keys = [randn((n, hkv, d), torch.float32, rng, scale=2.0) for n, _ in seqs]
    values = [randn((n, hkv, dv), torch.float32, rng) for n, _ in seqs]
    kq = _scales(kind, gran, hkv, d, 6.0, rng, offs)
    vq = _scales(kind, gran, hkv, dv, 3.0, rng, offs)
    k_cache, v_cache, table, lens = _quant_paged(keys, values, 16, cache_dtype, kq, vq, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE)
    ref, ref_lse = paged_f64(q, [_dequantize(_quantize(kk, *kq, cache_dtype), *kq) for kk in keys],
                             [_dequantize(_quantize(vv, *vq, cache_dtype), *vq) for vv in values], seqs, d ** -0.5)
    scale_args = dict(k_scale=kq[0].to(DEVICE), v_scale=vq[0].to(DEVICE),
                      k_offset=None if kq[1] is None else kq[1].to(DEVICE),
                      v_offset=None if vq[1] is None else vq[1].to(DEVICE))
    for impl in impls:
        out = torch.full((sum(q_lens), hq, dv), float("nan"), dtype=dtype, device=DEVICE)
        with ops.use_impl(paged_attention=impl):
            _, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), max(q_lens),
                                         return_lse=True, out=out, **scale_args)
        assert_close(out, ref, dtype, what=f"{impl} out")
        _assert_lse_close(lse, ref_lse, dtype)


def _assert_lse_close(actual, expected, dtype):
    """-inf pattern exact; finite lse within the usual bound plus a relative one (kernels round
    the dequantised keys, or q * per-channel scale, to the MMA dtype: an error that grows with
    the scores)."""
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.equal(torch.isinf(actual), torch.isinf(expected)), "lse -inf pattern differs"
    fin = torch.isfinite(expected)
    eps = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10, torch.float32: 1e-6}[dtype]
    err = (actual[fin] - expected[fin]).abs()
    bound = LSE_TOL[dtype] + eps * expected[fin].abs()
    assert (err <= bound).all(), f"lse max error {err.max():.3g} over bound"


@pytest.mark.parametrize("kind,gran,offs", [("fp8", "head", False), ("int8", "channel", True),
                                            ("int8", "tensor", False)])
def test_reshape_and_cache_quantises(kind, gran, offs, rng):
    cache_dtype = FP8 if kind == "fp8" else torch.int8
    hkv, d, dv, block_size, blocks = 2, 32, 16, 16, 5
    key = randn((9, hkv, d), torch.bfloat16, rng, scale=3.0)
    value = randn((9, hkv, dv), torch.bfloat16, rng)
    key[0, 0, :4] = torch.tensor([1e4, -1e4, 0.0, 1e-6])    # saturation both ways, zero, underflow
    kq = _scales(kind, gran, hkv, d, 4.0, rng, offs)
    vq = _scales(kind, gran, hkv, dv, 2.0, rng, offs)
    k_cache, v_cache = _poisoned(blocks, block_size, hkv, d, cache_dtype), _poisoned(blocks, block_size, hkv, dv,
                                                                                    cache_dtype)
    slots = torch.tensor([3, 70, -1, 16, 0, 45, 79, -1], dtype=torch.int64)   # 8 of 9 tokens; two padding
    k_cache, v_cache = k_cache.to(DEVICE), v_cache.to(DEVICE)
    ops.reshape_and_cache(key.to(DEVICE), value.to(DEVICE), k_cache, v_cache, slots.to(DEVICE),
                          k_scale=kq[0].to(DEVICE), v_scale=vq[0].to(DEVICE),
                          k_offset=None if kq[1] is None else kq[1].to(DEVICE),
                          v_offset=None if vq[1] is None else vq[1].to(DEVICE))
    want_k, want_v = _quantize(key, *kq, cache_dtype), _quantize(value, *vq, cache_dtype)
    flat_k, flat_v = k_cache.cpu().flatten(0, 1), v_cache.cpu().flatten(0, 1)
    written = set()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot].view(torch.uint8), want_k[t].view(torch.uint8)), f"key token {t}"
            assert torch.equal(flat_v[slot].view(torch.uint8), want_v[t].view(torch.uint8)), f"value token {t}"
            written.add(slot)
    untouched = [s for s in range(blocks * block_size) if s not in written]
    poison = _poisoned(1, 1, hkv, d, cache_dtype)[0, 0]
    assert torch.equal(flat_k[untouched].view(torch.uint8),
                       poison.expand(len(untouched), hkv, d).view(torch.uint8)), "a skipped slot was written"
    top = flat_k[3, 0, :4].float()   # token 0 went to slot 3
    if kind == "fp8":   # saturates at +-448 * scale (vLLM's satfinite), never NaN
        assert top[0] == E4M3_MAX and top[1] == -E4M3_MAX and top[2] == 0
    else:
        assert top[0] == 127 and top[1] == -128


@pytest.mark.skipif(not _impls("fp8"), reason="no implementation reads fp8 caches here")
def test_fp8_split_kv_and_softcap(rng):
    """Per-head fp8 scales through forced split-KV counts and with a logit softcap."""
    impl = _impls("fp8")[-1]
    hq, hkv, d, dtype = 8, 2, 64, torch.bfloat16
    seqs = [(300, 1), (17, 1), (130, 3)]
    keys = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    values = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    kq, vq = _scales("fp8", "head", hkv, d, 4.0, rng), _scales("fp8", "head", hkv, d, 4.0, rng)
    k_cache, v_cache, table, lens = _quant_paged(keys, values, 16, FP8, kq, vq, rng)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), dtype, rng, DEVICE, scale=3.0)
    ref, _ = paged_f64(q, [_dequantize(_quantize(kk, *kq, FP8), *kq) for kk in keys],
                       [_dequantize(_quantize(vv, *vq, FP8), *vq) for vv in values], seqs, d ** -0.5, softcap=5.0)
    with ops.use_impl(paged_attention=impl):
        got = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 3, softcap=5.0,
                                  k_scale=kq[0].to(DEVICE), v_scale=vq[0].to(DEVICE))
    assert_close(got, ref, dtype)
    if impl == "triton":
        import importlib

        from ascend_ext.kernels.triton import paged_attention as triton_paged
        from ascend_ext.ops.attention import kv_quant

        configs = importlib.import_module(f"ascend_ext.backends.{DEVICE}.configs")
        scales = kv_quant.normalize(k_cache, v_cache, kq[0].to(DEVICE), vq[0].to(DEVICE))
        for splits in (2, 5):
            out = torch.full_like(got, float("nan"))
            triton_paged.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens, DEVICE), 3,
                                         softmax_scale=d ** -0.5, window=(-1, 0), softcap=5.0, out=out,
                                         return_lse=False, kv_scales=scales, num_splits=splits, configs=configs)
            assert_close(out, ref, dtype, what=f"{splits} splits")


# ------------------------------------------------------------------------- bad input
def _small(cache_dtype=FP8):
    k_cache = torch.zeros(4, 16, 2, 32).to(cache_dtype)
    q = torch.zeros(3, 4, 32, dtype=torch.bfloat16)
    table = torch.arange(4, dtype=torch.int32).view(2, 2)
    return q, k_cache, k_cache.clone(), table, torch.tensor([5, 20], dtype=torch.int32), cu([1, 2])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(k_scale=torch.tensor([0.0]), v_scale=torch.tensor([1.0])), ValueError, "k_scale must be finite and > 0"),
    (dict(k_scale=torch.tensor([1.0]), v_scale=torch.tensor([-2.0])), ValueError, "v_scale must be finite and > 0"),
    (dict(k_scale=torch.tensor([float("nan")]), v_scale=torch.tensor([1.0])), ValueError, "k_scale must be finite"),
    (dict(k_scale=torch.tensor([1.0])), ValueError, "needs k_scale and v_scale"),
    (dict(k_scale=torch.ones(3), v_scale=torch.tensor([1.0])), ValueError, r"k_scale must hold 1 \(per tensor\)"),
    (dict(k_scale=torch.ones(64), v_scale=torch.ones(64)), ValueError, "per KV head"),   # fp8 has no per-channel
    (dict(k_scale=1.0, v_scale=torch.tensor([1.0])), TypeError, "k_scale must be a torch.Tensor"),
    (dict(k_scale=torch.tensor([1], dtype=torch.int32), v_scale=torch.tensor([1.0])), TypeError, "float tensor"),
    (dict(k_scale=torch.ones(1), v_scale=torch.ones(1), k_offset=torch.ones(1), v_offset=torch.ones(1)),
     ValueError, "FP8 KV caches are symmetric"),
])
def test_bad_scales_are_rejected(kwargs, error, match):
    q, k_cache, v_cache, table, lens, cuq = _small()
    with pytest.raises(error, match=match):
        ops.paged_attention(q, k_cache, v_cache, table, lens, cuq, 2, **kwargs)
    with pytest.raises(error, match=match):
        ops.reshape_and_cache(torch.zeros(2, 2, 32), torch.zeros(2, 2, 32), k_cache, v_cache,
                              torch.tensor([0, 1]), **kwargs)


def test_bad_cache_pairs_are_rejected():
    q, k_cache, v_cache, table, lens, cuq = _small()
    with pytest.raises(TypeError, match="v_cache must have the dtype of k_cache"):
        ops.paged_attention(q, k_cache, v_cache.view(torch.int8), table, lens, cuq, 2,
                            k_scale=torch.ones(1), v_scale=torch.ones(1))
    with pytest.raises(TypeError, match="or be a quantised cache"):
        ops.paged_attention(q, k_cache.view(torch.uint8), v_cache.view(torch.uint8), table, lens, cuq, 2)
    fq, fk = torch.zeros(3, 4, 32), torch.zeros(4, 16, 2, 32)
    with pytest.raises(ValueError, match="apply to quantised caches"):
        ops.paged_attention(fq, fk, fk, table, lens, cuq, 2, k_scale=torch.ones(1), v_scale=torch.ones(1))
    i8 = _small(torch.int8)
    with pytest.raises(ValueError, match="give both k_offset and v_offset"):
        ops.paged_attention(*i8, 2, k_scale=torch.ones(1), v_scale=torch.ones(1), k_offset=torch.ones(1))


@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=["float32_rows", "bf16_rows"])
def test_native_cpu_dequantises_every_code_exactly(kind, q_dtype, rng):
    """The native kernel widens cache bytes itself (no e4m3 instruction on CPUs): all 256 codes
    of a value row (e4m3fn subnormals, +-448, NaN; int8 -128..127 minus an offset) come back as
    the reference's dequantised floats, exactly (rounded once to the output dtype), through one
    visible key. float32 queries take the float32 rows with per-channel int8 parameters;
    bfloat16 queries with per-tensor ones take the bfloat16 rows, the scales folded out."""
    native = _dispatch.implementations("paged_attention", "cpu").get("native")
    if native is None or native.unavailable_reason("cpu") is not None:
        pytest.skip("the native CPU extension is not built here")
    codes = torch.arange(256, dtype=torch.int32)
    stored = (codes.to(torch.uint8).view(FP8) if kind == "fp8" else (codes - 128).to(torch.int8)).view(1, 1, 1, 256)
    d = 32
    k_cache = torch.zeros(2, 16, 1, d).to(stored.dtype)
    v_cache = torch.zeros(2, 16, 1, 256).to(stored.dtype)
    v_cache[1, 3] = stored[0, 0]                       # the sequence's 4th key, in its (permuted) 1st block
    table = torch.tensor([[1, 0]], dtype=torch.int32)
    per_channel = kind == "int8" and q_dtype == torch.float32
    v_scale = torch.rand(256 if per_channel else 1, generator=rng) + 0.5
    v_offset = torch.randint(-6, 7, (256 if per_channel else 1,), generator=rng).float() if kind == "int8" else None
    q = torch.randn(1, 2, d, generator=rng).to(q_dtype)
    out = torch.full((1, 2, 256), 7.0, dtype=q_dtype)
    args = dict(k_scale=torch.ones(1), v_scale=v_scale, k_offset=None if v_offset is None else torch.zeros(1),
                v_offset=v_offset)
    # window_size (0, 0): the query (position 3) sees key 3 only, so the output is that key's value row
    with ops.use_impl(paged_attention="native"):
        ops.paged_attention(q, k_cache, v_cache, table, torch.tensor([4], dtype=torch.int32), cu([1]), 1,
                            window_size=(0, 0), out=out, **args)
    expected = _dequantize(stored.view(1, 256), v_scale, v_offset).float().to(q_dtype)
    for head in range(2):
        torch.testing.assert_close(out[0, head], expected[0], rtol=0, atol=0, equal_nan=True)
    if kind == "fp8":
        assert out[0, 0].isnan().sum() == 2           # 0x7f and 0xff, e4m3fn's only NaNs


@pytest.mark.skipif("triton" not in _impls("int8"), reason="Triton cannot run here")
def test_triton_int8_offsets_with_softcap_raise():
    q, k_cache, v_cache, table, lens, cuq = _small(torch.int8)
    with ops.use_impl(paged_attention="triton"), pytest.raises(NotImplementedError, match="softcap"):
        ops.paged_attention(q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), table.to(DEVICE),
                            lens.to(DEVICE), cuq.to(DEVICE), 2, softcap=3.0,
                            **{n: torch.ones(1, device=DEVICE) for n in ("k_scale", "v_scale", "k_offset",
                                                                          "v_offset")})


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_quantised_cache_ops_compile_fullgraph(kind, rng):
    """Under torch.compile the quantising write and the dequantising read are the custom ops
    (scale tensors as graph inputs) and match eager."""
    cache_dtype = FP8 if kind == "fp8" else torch.int8
    hkv, d = 2, 32
    k_cache, v_cache = torch.zeros(4, 16, hkv, d).to(cache_dtype), torch.zeros(4, 16, hkv, d).to(cache_dtype)
    key, value = randn((20, hkv, d), torch.float32, rng), randn((20, hkv, d), torch.float32, rng)
    q = randn((2, 4, d), torch.float32, rng)
    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
    lens = torch.tensor([9, 12], dtype=torch.int32)
    slots = torch.cat([torch.arange(32, 41), torch.arange(16, 28)])[:20]
    scales = (torch.rand(hkv, generator=rng) * 0.02 + 0.01, torch.rand(hkv, generator=rng) * 0.02 + 0.01)
    offsets = (torch.ones(hkv * d), -torch.ones(hkv * d)) if kind == "int8" else (None, None)

    def step(key, value, k_cache, v_cache, k_scale, v_scale):
        kw = dict(k_scale=k_scale, v_scale=v_scale, k_offset=offsets[0], v_offset=offsets[1])
        ops.reshape_and_cache(key, value, k_cache, v_cache, slots, **kw)
        return ops.paged_attention(q, k_cache, v_cache, table, lens, cu([1, 1]), 1, **kw)

    with ops.use_impl(paged_attention="reference"):
        caches = (k_cache.clone(), v_cache.clone())
        expected = step(key, value, *caches, *scales)
        torch._dynamo.reset()
        got_caches = (k_cache.clone(), v_cache.clone())
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(key, value, *got_caches, *scales)
    torch.testing.assert_close(got, expected)
    for e, g in zip(caches, got_caches):
        assert torch.equal(e.view(torch.uint8), g.view(torch.uint8))


@triton.jit
def _scaled_widen_kernel(X, SCALE, OUT, REST, N: tl.constexpr):
    mul, rest = fp8_value_factors(tl.load(SCALE))
    offs = tl.arange(0, N)
    tl.store(OUT + offs, widen(tl.load(X + offs), tl.float16, mul))
    tl.store(REST, rest)


@pytest.mark.parametrize("scale", [0.02, 1.0, 1.9999999, 3.0e4, 7.3e-6, 1.0e-30, 0.1234567])
def test_fp8_value_scale_split_is_exact(scale):
    """The paged kernel widens e4m3 V tiles and multiplies them by the 7-bit significand of
    the V scale in float16, the rest going to the float32 accumulator: every e4m3 value times
    the significand must come out exact, and significand * rest must give the scale back."""
    every = torch.arange(256, dtype=torch.uint8).view(FP8)
    every = every[every.float().isfinite()].to(DEVICE)
    n = triton.next_power_of_2(every.numel())
    x = torch.cat([every, torch.zeros(n - every.numel(), dtype=FP8, device=DEVICE)])
    out = torch.empty(n, dtype=torch.float16, device=DEVICE)
    rest = torch.empty(1, dtype=torch.float32, device=DEVICE)
    _scaled_widen_kernel[(1,)](x, torch.tensor([scale], dtype=torch.float32, device=DEVICE), out, rest, N=n)
    mul = (out.double() / x.float().double())[x.float() != 0].unique()
    assert mul.numel() == 1 and 1.0 <= mul.item() < 2.0   # one exact factor for every value
    assert abs(mul.item() * rest.item() - scale) <= 2 * torch.finfo(torch.float32).eps * scale


def test_split_counts_of_the_eight_bit_rule(monkeypatch):
    """The split counts the H100 sweep of 2026-12-06 chose for fp8 caches (32 q / 8 KV heads,
    64-key tiles), from the SPLIT_WAVES rule, next to the bf16 rule's (benchmarks/NOTES.md)."""
    from ascend_ext.kernels.triton import paged_attention as triton_paged

    monkeypatch.setattr(triton_paged, "_sm_count", lambda index: 132)
    h100 = torch.device("cuda", 0)
    assert triton_paged.choose_splits(h100, 8 * 8, 16384, 64, waves=2) == 16     # B 8: 120 us vs 148 with 5
    assert triton_paged.choose_splits(h100, 8 * 8, 16384, 64) == 5
    assert triton_paged.choose_splits(h100, 128 * 8, 4096, 64, waves=2) == 1     # B 128: one wave pair already
    assert triton_paged.choose_splits(h100, 1 * 8, 16384, 64, waves=2) == 32     # B 1: capped
    assert triton_paged.choose_splits(h100, 1 * 8, 1024, 64, waves=2) == 8       # 2 tiles per split at least


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_native_quantised_cache_streaming_prefetch(kind, monkeypatch, rng):
    """Past the cache threshold the native kernel prefetches the next block's stored rows
    (ASCEND_EXT_NATIVE_STREAM_BYTES=1 forces that mode): results unchanged."""
    _native_or_skip(kind)
    monkeypatch.setenv("ASCEND_EXT_NATIVE_STREAM_BYTES", "1")
    for case in [c for c in _cases() if c.values[0] == kind][:2]:
        test_paged_attention_on_quantised_cache(*case.values, rng)


@pytest.mark.parametrize("stream", [False, True], ids=["in_cache", "streaming"])
@pytest.mark.parametrize("hq,hkv,d", [(8, 8, 128), (4, 2, 64), (6, 2, 64), (8, 2, 128), (14, 2, 64), (16, 2, 64)])
def test_native_fp8_decode_widened_on_load(hq, hkv, d, stream, monkeypatch, rng):
    """Decode over an fp8 cache with bf16 queries (the rows reach the bf16 kernels unstaged,
    widened in registers): GQA 1-8 (groups of 7 run as 4 + 3), odd lengths, NaN-poisoned unused
    slots, permuted tables, per-head scales, with and without the streaming prefetch - against
    float64 on the dequantised cache. With unit scales the result must equal, bit for bit, the
    bf16-cache kernel over the same (exactly representable) values."""
    _native_or_skip("fp8")
    if stream:
        monkeypatch.setenv("ASCEND_EXT_NATIVE_STREAM_BYTES", "1")
    # the bit-for-bit comparison is between the AVX-512 row kernels (bf16 decode takes the AMX
    # tiles where the CPU has them; fp8 decode stays on the row kernels)
    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", "0")
    seqs = [(1, 1), (67, 1), (0, 0), (130, 1), (5, 1), (200, 1)]
    keys = [randn((n, hkv, d), torch.float32, rng, scale=2.0) for n, _ in seqs]
    values = [randn((n, hkv, d), torch.float32, rng) for n, _ in seqs]
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, d), torch.bfloat16, rng)
    for unit in (False, True):
        kq = (torch.ones(1), None) if unit else _scales("fp8", "head", hkv, d, 6.0, rng)
        vq = (torch.ones(1), None) if unit else _scales("fp8", "head", hkv, d, 3.0, rng)
        if unit:   # values already on the e4m3 grid, so the bf16 cache holds them exactly
            keys = [_quantize(k, *kq, FP8).float() for k in keys]
            values = [_quantize(v, *vq, FP8).float() for v in values]
        k_cache, v_cache, table, lens = _quant_paged(keys, values, 16, FP8, kq, vq, rng)
        ref, ref_lse = paged_f64(q, [_dequantize(_quantize(kk, *kq, FP8), *kq) for kk in keys],
                                 [_dequantize(_quantize(vv, *vq, FP8), *vq) for vv in values], seqs, d ** -0.5)
        out = torch.full((sum(q_lens), hq, d), float("nan"), dtype=torch.bfloat16)
        with ops.use_impl(paged_attention="native"):
            _, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens), return_lse=True,
                                         out=out, k_scale=kq[0], v_scale=vq[0])
        assert_close(out, ref, torch.bfloat16, what="native fp8 decode")
        _assert_lse_close(lse, ref_lse, torch.bfloat16)
        if unit:
            widened = [c.float().to(torch.bfloat16) for c in (k_cache, v_cache)]   # NaN slots stay NaN
            same = torch.full_like(out, float("nan"))
            with ops.use_impl(paged_attention="native"):
                ops.paged_attention(q, *widened, table, lens, cu(q_lens), max(q_lens), out=same)
            assert torch.equal(out, same), "fp8 rows widened on load differ from the bf16 kernel's"
