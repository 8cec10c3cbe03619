"""The attention backend keeps a bfloat16 cache in the layout the bound implementations read
fastest, in process (no engine): "tiles" where the native CPU kernels run on AMX, "pairs" where
they have AVX512-BF16 (or with ASCEND_EXT_KV_LAYOUT=pairs), "rows" otherwise or with
ASCEND_EXT_KV_LAYOUT=rows; every step's write and read use the layer's one layout."""

import pytest
import torch

from ascend_ext.backends.cpu.native import kv_tiles_in_place, native_available, value_pairs_supported

from ..ops.naive import assert_close, paged_f64
from .vllm_runner import needs_vllm

pytestmark = needs_vllm

HQ, HKV, D, BS, NB = 8, 2, 64, 32, 6


def _metadata(cached: int, new: int):
    from ascend_ext.integration.attention_backend import AscendExtAttentionMetadata

    n = cached + new
    slots = torch.cat([torch.arange(4 * BS, 5 * BS), torch.arange(BS, 2 * BS), torch.arange(3 * BS, 4 * BS)])
    return AscendExtAttentionMetadata(
        num_actual_tokens=new, max_query_len=new, max_seq_len=n,
        query_start_loc=torch.tensor([0, new], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
        block_table=torch.tensor([[4, 1, 3]], dtype=torch.int32), slot_mapping=slots[cached:n], causal=True)


def _vllm_cpu_cache():
    """vLLM's combined cache on CPU: logical [NB, HKV, BS, 2D], head-major slots of K then V."""
    return torch.full((NB, HKV, BS, 2 * D), float("nan"), dtype=torch.bfloat16)


def _run(impls: dict, rng):
    """A prefill of 29 tokens then a decode step through the backend; returns the layer's
    layout, the outputs and the float64 references."""
    from ascend_ext import ops
    from ascend_ext.integration.attention_backend import AscendExtAttentionImpl

    impl = AscendExtAttentionImpl(HQ, D, D ** -0.5, HKV)
    kv_cache = _vllm_cpu_cache()
    keys = torch.randn(30, HKV, D, generator=rng).bfloat16()
    values = torch.randn(30, HKV, D, generator=rng).bfloat16()
    results = []
    with ops.use_impl(**impls):
        for cached, new in ((0, 29), (29, 1)):
            md = _metadata(cached, new)
            query = torch.randn(new, HQ, D, generator=rng).bfloat16()
            k, v = keys[cached:cached + new], values[cached:cached + new]
            out = torch.full((new, HQ, D), float("nan"), dtype=torch.bfloat16)
            impl.do_kv_cache_update(None, k, v, kv_cache, md.slot_mapping)
            impl.forward(None, query, k, v, kv_cache, md, out)
            ref, _ = paged_f64(query, [keys[:cached + new]], [values[:cached + new]], [(cached + new, new)],
                               D ** -0.5)
            results.append((out, ref))
    return impl._layout["kv_layout"], kv_cache, keys, values, results


@pytest.mark.skipif(native_available("cpu") is not None or not value_pairs_supported(D),
                    reason="the native kernels of this build do not read value pairs")
@pytest.mark.parametrize("env", [None, "pairs", "rows"])
@pytest.mark.parametrize("amx", ["1", "0"])
def test_native_backend_keeps_bf16_caches_in_its_layout(env, amx, rng, monkeypatch):
    from ascend_ext.ops.attention.kv_layout import from_pairs, from_tiles

    monkeypatch.setenv("ASCEND_EXT_NATIVE_AMX", amx)
    if env is not None:
        monkeypatch.setenv("ASCEND_EXT_KV_LAYOUT", env)
    layout, kv_cache, keys, values, results = _run({"attention": "native"}, rng)
    in_place = kv_tiles_in_place(D, D)   # AMX built, granted and not switched off
    assert layout == (env or ("tiles" if in_place else "pairs"))
    assert not in_place or amx == "1"
    for out, ref in results:
        assert_close(out, ref, torch.bfloat16)
    blocks = kv_cache.transpose(1, 2)[torch.tensor([4])]   # keys 0-29: [1, BS, HKV, 2 D]
    k_stored, v_stored = from_tiles(blocks, D) if layout == "tiles" else (blocks[..., :D], blocks[..., D:])
    if layout == "pairs":
        v_stored = from_pairs(v_stored)
    assert torch.equal(k_stored.flatten(0, 1)[:30], keys)
    assert torch.equal(v_stored.flatten(0, 1)[:30], values)


@pytest.mark.parametrize("impls", [{"attention": "reference"}, {"paged_attention": "triton"}],
                         ids=["reference", "triton"])
def test_other_implementations_keep_rows(impls, rng):
    """The reference reads pairs and tiles too but gains nothing from them; Triton reads rows only."""
    layout, _, _, _, results = _run(impls, rng)
    assert layout == "rows"
    for out, ref in results:
        assert_close(out, ref, torch.bfloat16)


def test_bad_layout_env(monkeypatch):
    from ascend_ext import ops

    monkeypatch.setenv("ASCEND_EXT_KV_LAYOUT", "columns")
    k_cache, v_cache = ops.split_kv_cache(_vllm_cpu_cache(), D)
    with pytest.raises(ValueError, match="ASCEND_EXT_KV_LAYOUT must be one of"):
        ops.preferred_kv_layout(k_cache, v_cache)
