"""Fused EP kernels (layout / scatter_rows / gather_reduce) vs independent loop references.

Compiled on CUDA, under the Triton interpreter on CPU (the same source)."""

import pytest
import torch

from ascend_ext.kernels.triton import available as triton_available

from .impls import DEVICE

pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(triton_available(DEVICE) is not None, reason=str(triton_available(DEVICE)))]


def _layout_loop(ids, num_bins, lo, width, dedup, capacity):
    """Positions by bin, then row, then slot; counts, offsets, dropped — spelled out."""
    rows, k = ids.shape
    entries = {b: [] for b in range(num_bins)}
    for r in range(rows):
        seen = set()
        for j in range(k):
            i = int(ids[r, j])
            if i < 0 or i < lo or (i - lo) // width >= num_bins:
                continue
            b = (i - lo) // width
            if dedup and b in seen:
                continue
            seen.add(b)
            entries[b].append((r, j))
    pos = torch.full((rows, k), -1, dtype=torch.int32)
    counts, offsets, start, dropped = [], [0], 0, 0
    for b in range(num_bins):
        kept = entries[b] if capacity is None else entries[b][:capacity]
        dropped += len(entries[b]) - len(kept)
        first = start if capacity is None else b * capacity
        for p, (r, j) in enumerate(kept):
            pos[r, j] = first + p
        start += len(entries[b])
        counts.append(len(kept))
        offsets.append(offsets[-1] + len(kept))
    return pos, torch.tensor(counts), torch.tensor(offsets), dropped


LAYOUTS = [  # rows, k, bins, lo, width, dedup, capacity
    (0, 2, 3, 0, 1, False, None),
    (1, 1, 1, 0, 1, False, 2),
    (37, 3, 5, 0, 1, False, None),       # k not a power of two, rows not a multiple of the chunk
    (61, 8, 16, 4, 1, False, None),      # a rank's local experts: ids below lo / past the bins go nowhere
    (50, 6, 4, 0, 3, True, None),        # destination ranks, one entry per (row, rank)
    (50, 6, 4, 0, 3, True, 7),           # ... with per-rank capacity (drops)
    (300, 8, 64, 0, 1, False, None),     # many chunks, many bins
    (90, 4, 70, 0, 1, False, 3),         # bins past a scan program, capacity
]


@pytest.mark.parametrize("rows,k,bins,lo,width,dedup,capacity", LAYOUTS)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_layout_matches_loop(rows, k, bins, lo, width, dedup, capacity, id_dtype, rng):
    from ascend_ext.kernels.triton.ep_layout import layout

    ids = torch.randint(-1, lo + bins * width + 3, (rows, k), generator=rng).to(id_dtype)
    got = layout(ids.to(DEVICE), bins, lo=lo, width=width, dedup=dedup, capacity=capacity)
    pos, counts, offsets, dropped = _layout_loop(ids, bins, lo, width, dedup, capacity)
    assert torch.equal(got.pos.cpu(), pos)
    assert torch.equal(got.counts.cpu(), counts) and got.counts.dtype == torch.int64
    assert torch.equal(got.offsets.cpu(), offsets)
    assert int(got.dropped) == dropped


def test_layout_of_a_row_strided_view(rng):
    from ascend_ext.kernels.triton.ep_layout import layout

    wide = torch.randint(-1, 9, (20, 7), generator=rng, dtype=torch.int32)
    view = wide[:, 2:5]
    got = layout(view.to(DEVICE) if DEVICE == "cpu" else wide.to(DEVICE)[:, 2:5], 9)
    assert torch.equal(got.pos.cpu(), _layout_loop(view, 9, 0, 1, False, None)[0])


def _positions(rows, k, dest_rows, rng):
    """Distinct destination rows for the (row, slot) entries, about a quarter of them -1."""
    perm = torch.randperm(dest_rows, generator=rng)[:rows * k].view(rows, k).to(torch.int32)
    drop = torch.rand(rows, k, generator=rng) < 0.25
    return torch.where(drop, torch.full_like(perm, -1), perm)


@pytest.mark.parametrize("hidden", [1, 40, 2100])       # one H block, masked tail, several H blocks
@pytest.mark.parametrize("mode", ["copy-bf16", "copy-f32", "quantise", "int8-copy", "with-meta"])
def test_scatter_rows(hidden, mode, rng):
    from ascend_ext.ops.moe.quant import quantize_per_token
    from ascend_ext.kernels.triton.ep_layout import scatter_rows

    rows, k, dest_rows = 7, 3, 29
    pos = _positions(rows, k, dest_rows, rng)
    src = torch.randn(rows, hidden, generator=rng) * 3
    src[1] = 0                                                     # an all-zero row: scale 1
    dtype = torch.bfloat16 if mode == "copy-bf16" else torch.float32
    kwargs, want, want_scale = {}, src.to(dtype), None
    if mode in ("quantise", "int8-copy"):
        q, s = quantize_per_token(src)
        want, want_scale = q, s
        dst = torch.full((dest_rows, hidden), 99, dtype=torch.int8)
        dst_scale = torch.full((dest_rows,), float("nan"))
        kwargs = dict(dst_scale=dst_scale.to(DEVICE))
        if mode == "int8-copy":
            src, kwargs["src_scale"] = q, s.to(DEVICE)
    else:
        dst = torch.full((dest_rows, hidden), float("nan"), dtype=dtype)
        src = src.to(dtype)
    meta = dst_meta = None
    if mode == "with-meta":
        ids = torch.randint(0, 50, (rows, k), generator=rng)
        weights = torch.rand(rows, k, generator=rng)
        buf = torch.full((dest_rows, 3 + 2 * k), -7, dtype=torch.int32)        # row-strided views
        meta = (ids.to(DEVICE), weights.to(DEVICE))
        dst_meta = (buf.to(DEVICE)[:, 1:1 + k], buf.to(DEVICE)[:, 1 + k:1 + 2 * k].view(torch.float32))
    dst = dst.to(DEVICE)
    scatter_rows(src.to(DEVICE), pos.to(DEVICE), dst, meta=meta, dst_meta=dst_meta, **kwargs)
    dst = dst.cpu()
    reached = torch.zeros(dest_rows, dtype=torch.bool)
    for r in range(rows):
        for j in range(k):
            p = int(pos[r, j])
            if p < 0:
                continue
            reached[p] = True
            if mode == "quantise":   # round half away from zero vs torch's half-even: one code apart at most
                assert (dst[p].int() - want[r].int()).abs().max() <= 1
            else:
                assert torch.equal(dst[p], want[r])
            if want_scale is not None:
                torch.testing.assert_close(kwargs["dst_scale"].cpu()[p], want_scale[r], rtol=1e-6, atol=0)
            if meta is not None:
                assert torch.equal(dst_meta[0].cpu()[p], ids[r].to(torch.int32))
                assert torch.equal(dst_meta[1].cpu()[p], weights[r])
    untouched = dst[~reached]
    assert (untouched.isnan().all() if dst.is_floating_point() else (untouched == 99).all()), \
        "rows no entry names must stay untouched"


@pytest.mark.parametrize("hidden", [1, 40, 2100])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gather_reduce_matches_float64(hidden, weighted, dtype, rng):
    from ascend_ext.kernels.triton.ep_layout import gather_reduce

    rows, k, src_rows = 9, 4, 40
    pos = _positions(rows, k, src_rows, rng)
    pos[2] = -1                                                    # a row with no entry: 0
    src = torch.randn(src_rows, hidden, generator=rng).to(dtype)
    named = torch.zeros(src_rows, dtype=torch.bool)
    named[pos[pos >= 0].long()] = True
    src[~named] = float("nan")                                     # never read
    weights = torch.rand(rows, k, generator=rng) if weighted else None
    out = torch.full((rows, hidden), float("nan"), dtype=dtype, device=DEVICE)
    gather_reduce(src.to(DEVICE), pos.to(DEVICE), None if weights is None else weights.to(DEVICE), out)
    want = torch.zeros(rows, hidden, dtype=torch.float64)
    for r in range(rows):
        for j in range(k):
            if pos[r, j] >= 0:
                want[r] += (1.0 if weights is None else float(weights[r, j])) * src[int(pos[r, j])].double()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.cpu().double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("quant", [None, "int8"])
def test_group_of_one_without_a_process_group(quant, rng):
    """The fused ep_dispatch/ep_combine run locally (no torch.distributed needed): identity
    experts give sum_j w_j * x per token; masked slots add nothing; bad ids raise."""
    from ascend_ext import ops

    tokens, hidden, experts, k = 21, 24, 10, 3
    x = torch.randn(tokens, hidden, generator=rng)
    weights, ids = ops.moe_route(torch.randn(tokens, experts, generator=rng), k)
    ids[::4, 2] = -1
    with ops.use_impl(ep_dispatch="triton", ep_combine="triton"):
        res = ops.ep_dispatch(x.to(DEVICE), ids.to(DEVICE), weights.to(DEVICE), experts, quant=quant)
        out = ops.ep_combine(res.dequantized(), res.handle).cpu()
        bad = ids.clone()
        bad[3, 0] = experts
        with pytest.raises(ValueError, match=f"topk_ids must lie in \\[-1, {experts}\\)"):
            ops.ep_dispatch(x.to(DEVICE), bad.to(DEVICE), weights.to(DEVICE), experts)
    want = (weights * (ids >= 0)).sum(1, keepdim=True) * x
    assert torch.equal(res.tokens_per_expert.cpu(), torch.bincount(ids[ids >= 0].long(), minlength=experts))
    bound = x.abs().amax(1, keepdim=True) / 254 * 1.001 + 1e-6 if quant else 1e-5
    assert ((out - want).abs() <= bound).all()
