"""The attention backend with attention sinks and cascade attention, in process (no engine):
vLLM's builder and impl classes on CPU, outputs against the plain ops and a float64 reference.

The e2e path (a gpt-oss model through vllm.LLM) is covered where vLLM's CPU build can run
gpt-oss (see test_vllm_e2e.py); this file covers the backend contract on any vLLM."""

from types import SimpleNamespace

import pytest
import torch

from ..ops.naive import allowed, assert_close, attention_f64, cu, paged_cache, randn
from .vllm_runner import needs_vllm

pytestmark = needs_vllm

HQ, HKV, D, BS = 8, 2, 64, 16


def _builder(monkeypatch, mode):
    from ascend_ext.integration.attention_backend import AscendExtMetadataBuilder

    monkeypatch.setenv("ASCEND_EXT_CASCADE", mode)
    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=64))
    return AscendExtMetadataBuilder(SimpleNamespace(block_size=BS), ["layer.0"], config, torch.device("cpu"))


def _shared_prefix_batch(rng, seqs, prefix_blocks, dtype=torch.bfloat16):
    """Sequences (query_len, kv_len) whose first ``prefix_blocks`` blocks are the same physical
    blocks (as prefix caching makes them), in vLLM's combined cache layout."""
    prefix = prefix_blocks * BS
    shared = randn((prefix, HKV, D), dtype, rng), randn((prefix, HKV, D), dtype, rng)
    keys = [torch.cat([shared[0], randn((n - prefix, HKV, D), dtype, rng)]) for _, n in seqs]
    values = [torch.cat([shared[1], randn((n - prefix, HKV, D), dtype, rng)]) for _, n in seqs]
    k_cache, v_cache, table, lens = paged_cache(keys, values, BS, rng)
    table[1:, :prefix_blocks] = table[0, :prefix_blocks]
    combined = torch.cat([k_cache, v_cache], dim=-1).transpose(1, 2)   # [blocks, Hkv, bs, 2D] view
    q_lens = [lq for lq, _ in seqs]
    common = SimpleNamespace(num_actual_tokens=sum(q_lens), max_query_len=max(q_lens), max_seq_len=int(lens.max()),
                             query_start_loc=cu(q_lens), seq_lens=lens, block_table_tensor=table,
                             slot_mapping=torch.zeros(sum(q_lens), dtype=torch.int64), causal=True)
    return keys, values, combined, common, q_lens


def _in_backend_layout(combined):
    """Rewrite a rows-layout combined cache in the layout the backend picks for it with the
    implementations bound now (it writes every cache it reads in that layout)."""
    from ascend_ext import ops
    from ascend_ext.ops.attention.kv_layout import to_pairs, to_tiles

    k_cache, v_cache = ops.split_kv_cache(combined, D)
    layout = ops.preferred_kv_layout(k_cache, v_cache)
    if layout == "tiles":
        combined.transpose(1, 2).copy_(to_tiles(k_cache.clone(), v_cache.clone()))
    elif layout == "pairs":
        v_cache.copy_(to_pairs(v_cache.clone()))


def _reference(q, keys, values, seqs, sinks):
    refs, q0 = [], 0
    for (lq, n), kk, vv in zip(seqs, keys, values):
        refs.append(attention_f64(q[q0:q0 + lq], kk, vv, D ** -0.5, allowed(lq, n, True, (-1, -1)),
                                  sinks=sinks)[0])
        q0 += lq
    return torch.cat(refs)


def _impl(sinks=None, sliding_window=None):
    from ascend_ext.integration.attention_backend import AscendExtAttentionImpl

    return AscendExtAttentionImpl(HQ, D, D ** -0.5, HKV, sinks=sinks, sliding_window=sliding_window)


def test_backend_declares_sinks_and_selection_accepts_them():
    from ascend_ext import ops
    from ascend_ext.integration.attention_backend import AscendExtAttentionBackend
    from ascend_ext.integration.selection import require_paged_features, unsupported_reason

    assert AscendExtAttentionBackend.supports_sink()
    config = SimpleNamespace(use_mla=False, kv_cache_dtype="auto", attn_type="decoder", has_sink=True,
                             use_sparse=False, use_mm_prefix=False, use_pcp=False, use_dcp=False, use_rswa=False)
    assert unsupported_reason(None, config) is None
    with ops.use_impl(paged_attention="reference"):
        require_paged_features("auto", True, "cpu")
    with pytest.raises(ValueError, match=r"one logit per query head \(8\)"):
        _impl(sinks=torch.zeros(4))


@pytest.mark.parametrize("impl_name", ["reference", "native"])
def test_sinks_reach_every_call_as_float32(impl_name, rng, monkeypatch):
    """gpt-oss's sinks parameter is bfloat16 and gets its values after the impl is built (weight
    loading writes in place): the backend converts it once per update."""
    from ascend_ext import ops
    from ascend_ext.ops import _dispatch

    native = _dispatch.implementations("paged_attention", "cpu").get("native")
    if impl_name == "native" and (native is None or native.unavailable_reason("cpu")):
        pytest.skip("native CPU kernels are not built")
    seqs = [(1, 40), (7, 30), (1, 17)]
    keys, values, combined, common, q_lens = _shared_prefix_batch(rng, seqs, 0 + 1)
    md = _builder(monkeypatch, "off").build(0, common)
    sinks = torch.nn.Parameter(torch.empty(HQ, dtype=torch.bfloat16), requires_grad=False)
    impl = _impl(sinks=sinks)
    q = randn((sum(q_lens), HQ, D), torch.bfloat16, rng)
    with ops.use_impl(paged_attention=impl_name):
        _in_backend_layout(combined)
    for values_of_sinks in (torch.linspace(-2, 3, HQ), torch.linspace(4, -1, HQ)):
        with torch.no_grad():
            sinks.copy_(values_of_sinks)                 # "weight loading": in place
        out = torch.full_like(q, float("nan"))
        with ops.use_impl(paged_attention=impl_name):
            impl.forward(None, q, None, None, combined, md, out)
        assert_close(out, _reference(q, keys, values, seqs, sinks.float()), torch.bfloat16)


@pytest.mark.parametrize("with_sinks", [False, True])
def test_cascade_equals_plain_paged(with_sinks, rng, monkeypatch):
    """A decode batch of 12 sequences sharing 3 blocks: with ASCEND_EXT_CASCADE=always the
    backend runs the cascade (plan on the metadata) and matches both the plain path and the
    float64 reference; mixed query lengths (chunked prefill after the prefix) included."""
    from ascend_ext import ops

    seqs = [(1, 60), (1, 49), (3, 77), (1, 93)] * 3
    keys, values, combined, common, q_lens = _shared_prefix_batch(rng, seqs, 3)
    q = randn((sum(q_lens), HQ, D), torch.bfloat16, rng)
    sinks = torch.linspace(-1, 2, HQ) if with_sinks else None
    impl = _impl(sinks=sinks)
    outs = {}
    for mode in ("always", "off"):
        md = _builder(monkeypatch, mode).build(0, common)
        out = torch.full_like(q, float("nan"))
        with ops.use_impl(paged_attention="reference"):
            impl.forward(None, q, None, None, combined, md, out)
        assert (md.cascade is not None) == (mode == "always")
        outs[mode] = out
    assert md.cascade_planned
    plan = _builder(monkeypatch, "always").build(0, common)
    from ascend_ext.integration.attention_backend import cascade_plan

    assert cascade_plan(plan).prefix_len == 3 * BS
    torch.testing.assert_close(outs["always"], outs["off"], atol=2e-2, rtol=2e-2)
    assert_close(outs["always"], _reference(q, keys, values, seqs, sinks), torch.bfloat16)


def test_cascade_policy(rng, monkeypatch):
    """auto: small batches or short prefixes stay on the plain path without reading the block
    table; sliding-window layers and capture metadata never cascade; off disables it."""
    from ascend_ext.integration.attention_backend import cascade_plan

    seqs = [(1, 300)] * 8
    _, _, combined, common, _ = _shared_prefix_batch(rng, seqs, 17)   # 272 shared keys, 8 sequences
    assert cascade_plan(_builder(monkeypatch, "auto").build(0, common)) is not None
    assert cascade_plan(_builder(monkeypatch, "off").build(0, common)) is None
    small = SimpleNamespace(**{**vars(common), "query_start_loc": common.query_start_loc[:5],
                               "seq_lens": common.seq_lens[:4], "block_table_tensor": common.block_table_tensor[:4],
                               "num_actual_tokens": 4})
    assert cascade_plan(_builder(monkeypatch, "auto").build(0, small)) is None
    assert cascade_plan(_builder(monkeypatch, "always").build_for_cudagraph_capture(common)) is None
    with pytest.raises(ValueError, match="ASCEND_EXT_CASCADE must be one of"):
        _builder(monkeypatch, "sometimes")
    seen = {}
    from ascend_ext.integration import attention_backend as ab

    monkeypatch.setattr(ab.ops, "cascade_attention", lambda *a, **k: seen.setdefault("cascade", True))
    monkeypatch.setattr(ab.ops, "paged_attention", lambda *a, **k: seen.setdefault("paged", k["window_size"]))
    md = _builder(monkeypatch, "always").build(0, common)
    _impl(sliding_window=64).forward(None, torch.zeros(8, HQ, D), None, None, combined, md, torch.zeros(8, HQ, D))
    assert seen == {"paged": (63, 0)}
