"""kv_layout "pairs" and "tiles" (ops/attention/kv_layout.py): the cache writers against the
layouts spelled out element by element, the readers (native CPU kernels: row kernels, AVX-512
tiles, AMX tiles, the AMX kernel over "tiles" caches and the staged rows of "tiles" caches
elsewhere; the reference) against the float64 reference, compilation, and the refusals."""

import itertools

import pytest
import torch

from ascend_ext import ops
from ascend_ext.backends.cpu.native import native_available, value_pairs_supported

from .naive import assert_close, assert_lse_close, cu, paged_f64, randn

NATIVE = pytest.mark.skipif(native_available("cpu") is not None or not value_pairs_supported(128),
                            reason=f"the native kernels of this build do not read value pairs "
                                   f"({native_available('cpu') or 'no AVX512-BF16'})")


def _amx_modes() -> list[str]:
    """ASCEND_EXT_NATIVE_AMX settings that select different kernels on this machine."""
    if native_available("cpu") is None and torch.ops.ascend_ext_native.amx_usable():
        return ["1", "0"]
    return ["0"]


def head_major(blocks, block_size, hkv, d):
    """A NaN-poisoned bfloat16 cache [blocks, block_size, Hkv, D] with head-major block interiors."""
    return torch.full((blocks, hkv, block_size, d), float("nan"), dtype=torch.bfloat16).transpose(1, 2)


def caches(memory, blocks, block_size, hkv, d):
    """NaN-poisoned (k_cache, v_cache) views [blocks, block_size, Hkv, D]: separate head-major
    tensors, separate token-major ones, or vLLM's combined cache on CPU (head-major slots holding
    K then V, split by ops.split_kv_cache)."""
    if memory == "head_major":
        return head_major(blocks, block_size, hkv, d), head_major(blocks, block_size, hkv, d)
    if memory == "token_major":
        return tuple(torch.full((blocks, block_size, hkv, d), float("nan"), dtype=torch.bfloat16) for _ in "kv")
    combined = torch.full((blocks, hkv, block_size, 2 * d), float("nan"), dtype=torch.bfloat16)
    return ops.split_kv_cache(combined, d)


def fill(keys, values, block_size, rng, impl, layout="pairs", memory="head_major"):
    """Caches of the per-sequence K/V written through ops.reshape_and_cache (two calls, tokens
    shuffled, one padding slot -1) into randomly permuted blocks with spares; block table
    columns past a sequence's blocks hold -1. Returns k_cache, v_cache, table, seq_lens."""
    hkv, d = keys[0].shape[1], keys[0].shape[2]
    needed = [-(-k.shape[0] // block_size) for k in keys]
    total = sum(needed) + 3
    perm = torch.randperm(total, generator=rng)
    k_cache, v_cache = caches(memory, total, block_size, hkv, d)
    table = torch.full((len(keys), max(needed + [1]) + 1), -1, dtype=torch.int32)
    slots, cursor = [], 0
    for b, k in enumerate(keys):
        table[b, :needed[b]] = perm[cursor:cursor + needed[b]]
        cursor += needed[b]
        pos = torch.arange(k.shape[0])
        slots.append(table[b, pos // block_size].long() * block_size + pos % block_size)
    key, value, slot = torch.cat(keys), torch.cat(values), torch.cat(slots)
    order = torch.randperm(key.shape[0], generator=rng)
    key, value, slot = key[order], value[order], slot[order]
    half = key.shape[0] // 2
    with ops.use_impl(attention=impl):
        for part in (slice(0, half), slice(half, None)):
            padded = torch.cat([slot[part], torch.tensor([-1])])
            pad_kv = lambda x: torch.cat([x[part], x[:1]])   # noqa: E731 - the padding token's row
            ops.reshape_and_cache(pad_kv(key), pad_kv(value), k_cache, v_cache, padded, kv_layout=layout)
    return k_cache, v_cache, table, torch.tensor([k.shape[0] for k in keys], dtype=torch.int32)


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=NATIVE)])
@pytest.mark.parametrize("block_size", [2, 16])
@pytest.mark.parametrize("memory", ["head_major", "token_major", "combined"])
def test_writer_stores_the_documented_layout(impl, block_size, memory, rng):
    """Key j at offset o of its block: element 2c + o % 2 of the pair starting at slot o - o % 2,
    read as slot rows of that head; keys stay rows; slots never written stay NaN."""
    hkv, d = 2, 32
    keys = [randn((n, hkv, d), torch.bfloat16, rng) for n in (5, 17)]
    values = [randn((n, hkv, d), torch.bfloat16, rng) for n in (5, 17)]
    k_cache, v_cache, table, _ = fill(keys, values, block_size, rng, impl, memory=memory)
    written = 0
    for b, (k, v) in enumerate(zip(keys, values)):
        for j in range(k.shape[0]):
            blk, off = int(table[b, j // block_size]), j % block_size
            assert torch.equal(k_cache[blk, off], k[j])
            pair, t = off - off % 2, off % 2
            for h, c in itertools.product(range(hkv), range(d)):
                flat = 2 * c + t
                assert v_cache[blk, pair + flat // d, h, flat % d] == v[j, h, c], (b, j, h, c)
            written += 1
    # each written key fills half of its pair's two slots; a pair with one key keeps NaN halves
    assert int((~v_cache.isnan()).sum()) == written * hkv * d


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=NATIVE)])
@pytest.mark.parametrize("block_size", [32, 64])
@pytest.mark.parametrize("d", [64, 32])
def test_tiles_writer_stores_the_documented_layout(impl, block_size, d, rng):
    """"tiles": key k at offset o of its block lives in the step region of slots
    o - o % 32 .. + 31 (their K and V parts, 32 (D + Dv) elements): element
    (g D/32 + r) 512 + 32 j + 2 kg + t holds k[32 r + 2 j + t] for kk = o % 32 = 16 g + kg, and
    element 32 D + (c // 16) 512 + 32 (kk // 2) + 2 (c % 16) + kk % 2 holds v[c]; elements of keys
    never written stay NaN."""
    hkv = 2
    keys = [randn((n, hkv, d), torch.bfloat16, rng) for n in (5, 40)]
    values = [randn((n, hkv, d), torch.bfloat16, rng) for n in (5, 40)]
    k_cache, v_cache, table, _ = fill(keys, values, block_size, rng, impl, layout="tiles", memory="combined")
    both = k_cache.as_strided((*k_cache.shape[:3], 2 * d), k_cache.stride())
    written = 0
    for b, (k, v) in enumerate(zip(keys, values)):
        for j in range(k.shape[0]):
            blk, off = int(table[b, j // block_size]), j % block_size
            first, kk = off - off % 32, off % 32
            region = both[blk, first:first + 32].transpose(0, 1).reshape(hkv, -1)   # [H, 32 (D + Dv)]
            g, kg = divmod(kk, 16)
            for h, e in itertools.product(range(hkv), range(d)):
                r, j2, t = e // 32, e % 32 // 2, e % 2
                assert region[h, (g * d // 32 + r) * 512 + 32 * j2 + 2 * kg + t] == k[j, h, e], (b, j, h, e)
                assert region[h, 32 * d + e // 16 * 512 + 32 * (kk // 2) + 2 * (e % 16) + kk % 2] == v[j, h, e]
            written += 1
    assert int((~both.isnan()).sum()) == written * hkv * 2 * d


def test_layout_helpers_invert_each_other(rng):
    from ascend_ext.ops.attention.kv_layout import from_pairs, from_tiles, to_pairs, to_tiles

    rows = randn((3, 32, 2, 64), torch.bfloat16, rng)
    assert torch.equal(from_pairs(to_pairs(rows)), rows)
    assert not torch.equal(to_pairs(rows), rows)
    values = randn((3, 32, 2, 32), torch.bfloat16, rng)
    tiled = to_tiles(rows, values)
    assert tiled.shape == (3, 32, 2, 96)
    k, v = from_tiles(tiled, 64)
    assert torch.equal(k, rows) and torch.equal(v, values)
    assert not torch.equal(tiled[..., :64], rows)


CASES = {   # (keys, new queries) per sequence: odd lengths, a 1-key and an empty sequence, chunks
    "decode": [(1001, 1), (1, 1), (129, 1), (64, 1), (0, 0), (257, 1)],
    "chunks": [(257, 5), (300, 40), (33, 33), (2, 1)],
}


BLOCKS = {   # block sizes and cache memory per layout ("tiles": multiples of 32)
    "pairs": [(16, "head_major"), (32, "combined"), (128, "combined"), (16, "token_major")],
    "tiles": [(32, "combined"), (64, "combined"), (128, "combined")],
}


@NATIVE
@pytest.mark.parametrize("amx", _amx_modes())
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (12, 2)])
@pytest.mark.parametrize("layout,block_size,memory", [(lay, *b) for lay in BLOCKS for b in BLOCKS[lay]])
@pytest.mark.parametrize("window", [(-1, -1), (37, 0)])
@pytest.mark.parametrize("dim", [128, 32])
def test_native_layouts_match_float64(amx, case, hq, hkv, layout, block_size, memory, window, dim, monkeypatch, rng):
    """Decode (one row per KV head: row kernels; GQA 4 / 6: AMX decode form or four-row kernels;
    "tiles": the AMX tiled kernel for every row count, staged rows without AMX) and chunks over
    a pairs / tiles cache: NaN in every unwritten slot (odd tails leave half a pair NaN, a
    partial 16-key group NaN words in all its slots), permuted block tables, windows starting
    on odd keys, the cache memory layouts, head dims 128 and 32 (value pairs: one 16-dim chunk
    per half)."""
    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", amx)
    seqs = CASES[case]
    keys = [randn((n, hkv, dim), torch.bfloat16, rng) for n, _ in seqs]
    values = [randn((n, hkv, dim), torch.bfloat16, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = fill(keys, values, block_size, rng, "native", layout=layout, memory=memory)
    q_lens = [lq for _, lq in seqs]
    q = randn((sum(q_lens), hq, dim), torch.bfloat16, rng)
    with ops.use_impl(attention="native"):
        got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu(q_lens), max(q_lens),
                                       window_size=window, return_lse=True, kv_layout=layout)
    ref, ref_lse = paged_f64(q, keys, values, seqs, dim ** -0.5, True, window)
    assert_close(got, ref, torch.bfloat16)
    assert_lse_close(lse, ref_lse, torch.bfloat16)


@NATIVE
@pytest.mark.parametrize("amx", _amx_modes())
@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("layout", ["pairs", "tiles"])
def test_native_layouts_kv_splits_sinks_softcap(amx, num_threads, streaming, layout, monkeypatch, rng):
    """Few work items over long contexts (KV splits, cut on whole 32-key steps), the streaming
    path with its prefetches, sinks, and softcap (row kernels only)."""
    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", amx)
    if streaming:
        monkeypatch.setenv("ASCEND_EXT_NATIVE_STREAM_BYTES", "0")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        seqs, hq, hkv = [(3001, 1), (1537, 2)], 8, 2
        keys = [randn((n, hkv, 64), torch.bfloat16, rng) for n, _ in seqs]
        values = [randn((n, hkv, 64), torch.bfloat16, rng) for n, _ in seqs]
        k_cache, v_cache, table, lens = fill(keys, values, 16 if layout == "pairs" else 32, rng, "native",
                                             layout=layout, memory="combined")
        q = randn((3, hq, 64), torch.bfloat16, rng)
        sinks = torch.randn(hq, generator=rng)
        for softcap, window in ((0.0, (-1, -1)), (0.0, (701, 0)), (5.0, (-1, -1))):
            with ops.use_impl(attention="native"):
                got, lse = ops.paged_attention(q, k_cache, v_cache, table, lens, cu([1, 2]), 2, window_size=window,
                                               softcap=softcap, sinks=sinks, return_lse=True, kv_layout=layout)
            ref, ref_lse = paged_f64(q, keys, values, seqs, 64 ** -0.5, True, window, softcap=softcap, sinks=sinks)
            assert_close(got, ref, torch.bfloat16)
            assert_lse_close(lse, ref_lse, torch.bfloat16)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layout", ["pairs", "tiles"])
def test_reference_reads_layouts(layout, rng):
    seqs = [(77, 3), (5, 1)]
    keys = [randn((n, 2, 32), torch.bfloat16, rng) for n, _ in seqs]
    values = [randn((n, 2, 32), torch.bfloat16, rng) for n, _ in seqs]
    k_cache, v_cache, table, lens = fill(keys, values, 32, rng, "reference", layout=layout, memory="combined")
    q = randn((4, 4, 32), torch.bfloat16, rng)
    with ops.use_impl(attention="reference"):
        got = ops.paged_attention(q, k_cache, v_cache, table, lens, cu([3, 1]), 3, kv_layout=layout)
    assert_close(got, paged_f64(q, keys, values, seqs, 32 ** -0.5)[0], torch.bfloat16)


@pytest.mark.parametrize("impl", ["reference", pytest.param("native", marks=NATIVE)])
@pytest.mark.parametrize("layout", ["pairs", "tiles"])
def test_layout_ops_compile_fullgraph(impl, layout, rng):
    """Under torch.compile the write and the read are the custom ops with kv_layout in
    their schema, and match eager."""
    hkv, d = 2, 64
    key, value = randn((20, hkv, d), torch.bfloat16, rng), randn((20, hkv, d), torch.bfloat16, rng)
    q = randn((2, 4, d), torch.bfloat16, rng)
    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
    lens = torch.tensor([9, 11], dtype=torch.int32)
    block = 32
    slots = torch.cat([torch.arange(2 * block, 2 * block + 9), torch.arange(block, block + 11)])

    def step(key, value, k_cache, v_cache):
        ops.reshape_and_cache(key, value, k_cache, v_cache, slots, kv_layout=layout)
        return ops.paged_attention(q, k_cache, v_cache, table, lens, cu([1, 1]), 1, kv_layout=layout)

    with ops.use_impl(attention=impl):
        caches = globals()["caches"]("combined", 4, block, hkv, d)
        expected = step(key, value, *caches)
        torch._dynamo.reset()
        got_caches = globals()["caches"]("combined", 4, block, hkv, d)
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(key, value, *got_caches)
    torch.testing.assert_close(got, expected)
    for e, g in zip(caches, got_caches):
        assert torch.equal(e.view(torch.int16), g.view(torch.int16))


def test_pairs_bad_input(rng):
    q = randn((1, 4, 32), torch.bfloat16, rng)
    table = torch.zeros(1, 1, dtype=torch.int32)
    lens = torch.ones(1, dtype=torch.int32)
    good = head_major(2, 16, 2, 32)

    def call(v_cache, layout="pairs", k_cache=None, query=q):
        return ops.paged_attention(query, good if k_cache is None else k_cache, v_cache, table, lens, cu([1]), 1,
                                   kv_layout=layout)

    with pytest.raises(ValueError, match="kv_layout must be one of"):
        call(good, "columns")
    with pytest.raises(TypeError, match="kv_layout 'pairs' needs bfloat16 caches, k_cache is torch.float32"):
        f32 = head_major(2, 16, 2, 32).float()
        call(f32, k_cache=f32, query=q.float())
    with pytest.raises(ValueError, match="even block size"):
        call(head_major(2, 15, 2, 32), k_cache=head_major(2, 15, 2, 32))
    with pytest.raises(ValueError, match="kv_layout 'tiles' needs block size and head dims that are multiples of 32"):
        call(good, "tiles")   # block size 16
    with pytest.raises(ValueError, match="multiples of 32"):
        wide = head_major(2, 32, 2, 48)
        call(wide, "tiles", k_cache=wide, query=randn((1, 4, 48), torch.bfloat16, rng))
    with pytest.raises(ValueError, match="two halves of one combined cache"):
        call(head_major(2, 32, 2, 32), "tiles", k_cache=head_major(2, 32, 2, 32))
    with pytest.raises(ValueError, match="two halves of one combined cache"):   # token-major slots
        token_major = caches("token_major", 2, 32, 2, 32)
        call(token_major[1], "tiles", k_cache=token_major[0])
    with pytest.raises(TypeError, match="q"):
        k_cache, v_cache = caches("combined", 2, 32, 2, 32)
        call(v_cache, "tiles", k_cache=k_cache, query=q.float())
    with pytest.raises(ValueError, match="kv_layout must be one of"):
        ops.reshape_and_cache(q[:, :2], q[:, :2], good, good, torch.zeros(1, dtype=torch.int64), kv_layout="")


@pytest.mark.parametrize("layout", ["pairs", "tiles"])
def test_triton_refuses_layouts(layout, rng):
    """Implementations without the layout refuse it by name instead of reading rows."""
    q = randn((1, 4, 32), torch.bfloat16, rng)
    k_cache, v_cache = caches("combined", 2, 32, 2, 32)
    with ops.use_impl(paged_attention="triton"), pytest.raises(NotImplementedError, match=f"kv_layout '{layout}'"):
        ops.paged_attention(q, k_cache, v_cache, torch.zeros(1, 1, dtype=torch.int32),
                            torch.ones(1, dtype=torch.int32), cu([1]), 1, kv_layout=layout)


@NATIVE
def test_raw_op_checks_pairs():
    q = torch.randn(1, 4, 32).bfloat16()
    table = torch.zeros(1, 1, dtype=torch.int32)
    lens = torch.ones(1, dtype=torch.int32)
    out = torch.empty(1, 4, 32, dtype=torch.bfloat16)
    odd = torch.zeros(2, 15, 2, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="even block size"):
        torch.ops.ascend_ext_native.paged_attention(q, odd, odd, table, lens, cu([1]), 0.1, -1, 0, 0.0,
                                                    out, None, value_pairs=True)
    with pytest.raises(RuntimeError, match="even block size"):
        torch.ops.ascend_ext_native.reshape_and_cache(q[:, :2], q[:, :2], odd, odd,
                                                      torch.zeros(1, dtype=torch.int64), value_pairs=True)
    with pytest.raises(RuntimeError, match="bfloat16 caches only"):
        f32 = torch.zeros(2, 16, 2, 32)
        torch.ops.ascend_ext_native.paged_attention(q.float(), f32, f32, table, lens, cu([1]), 0.1, -1, 0, 0.0,
                                                    out.float(), None, value_pairs=True)
    native = torch.ops.ascend_ext_native
    block16 = ops.split_kv_cache(torch.zeros(2, 2, 16, 64, dtype=torch.bfloat16), 32)
    block32 = ops.split_kv_cache(torch.zeros(2, 2, 32, 64, dtype=torch.bfloat16), 32)
    separate = torch.zeros(2, 32, 2, 32, dtype=torch.bfloat16)
    slot = torch.zeros(1, dtype=torch.int64)
    for caches_, match in ((block16, "multiples of 32"), ((separate, separate), "two halves of one combined cache")):
        with pytest.raises(RuntimeError, match=match):
            native.paged_attention(q, *caches_, table, lens, cu([1]), 0.1, -1, 0, 0.0, out, None, kv_tiles=True)
        with pytest.raises(RuntimeError, match=match):
            native.reshape_and_cache(q[:, :2], q[:, :2], *caches_, slot, kv_tiles=True)
    with pytest.raises(RuntimeError, match="exclude each other"):
        native.paged_attention(q, *block32, table, lens, cu([1]), 0.1, -1, 0, 0.0, out, None, value_pairs=True,
                               kv_tiles=True)


@NATIVE
@pytest.mark.parametrize("amx", _amx_modes())
@pytest.mark.parametrize("layout", ["pairs", "tiles"])
def test_native_cascade_over_layouts(amx, layout, monkeypatch, rng):
    """cascade_attention (a shared prefix pass whose query rows outnumber its keys, non-causal,
    plus a suffix pass merged by lse) over a pairs / tiles cache matches float64."""
    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", amx)
    bs, prefix_blocks, hq, hkv, d = 32, 2, 8, 2, 64
    prefix_k, prefix_v = randn((64, hkv, d), torch.bfloat16, rng), randn((64, hkv, d), torch.bfloat16, rng)
    seqs = [(1, 97), (3, 70), (1, 64 + 33)]
    keys = [torch.cat([prefix_k, randn((n - 64, hkv, d), torch.bfloat16, rng)]) for _, n in seqs]
    values = [torch.cat([prefix_v, randn((n - 64, hkv, d), torch.bfloat16, rng)]) for _, n in seqs]
    k_cache, v_cache, table, lens = fill(keys, values, bs, rng, "native", layout=layout, memory="combined")
    table[1:, :prefix_blocks] = table[0, :prefix_blocks]   # the shared prefix: the same physical blocks
    q_lens = [lq for lq, _ in seqs]
    q = randn((sum(q_lens), hq, d), torch.bfloat16, rng)
    plan = ops.plan_cascade(table, lens, cu(q_lens), q.shape[0], bs, prefix_blocks)
    with ops.use_impl(paged_attention="native"):
        got = ops.cascade_attention(q, k_cache, v_cache, plan, cu(q_lens), max(q_lens), kv_layout=layout)
    ref, _ = paged_f64(q, keys, values, [(n, lq) for lq, n in seqs], d ** -0.5)
    assert_close(got, ref, torch.bfloat16)
