"""The backends' CUDA-graph contract, checked on CPU with vLLM's classes: the declared
support level, metadata that reference the runner's persistent buffers (or the builder's
own, for other index dtypes), and capture metadata whose key bound holds for any replay."""

from types import SimpleNamespace

import torch

from .vllm_runner import needs_vllm

pytestmark = needs_vllm


def _builder():
    from ascend_ext.integration.attention_backend import AscendExtMetadataBuilder

    config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=8))
    return AscendExtMetadataBuilder(SimpleNamespace(block_size=16), ["layer.0"], config, torch.device("cpu"))


def _common(batch: int, index_dtype=torch.int32):
    seq_lens = torch.tensor([5, 17, 40][:batch], dtype=index_dtype)
    return SimpleNamespace(num_actual_tokens=batch, max_query_len=1, max_seq_len=int(seq_lens.max()),
                           query_start_loc=torch.arange(batch + 1, dtype=index_dtype), seq_lens=seq_lens,
                           block_table_tensor=torch.zeros((batch, 6), dtype=torch.int32),
                           slot_mapping=torch.arange(batch, dtype=torch.int64), causal=True)


def test_declared_support_levels():
    from vllm.v1.attention.backend import AttentionCGSupport

    from ascend_ext.integration.attention_backend import AscendExtMetadataBuilder
    from ascend_ext.integration.mla_backend import AscendExtMLAMetadataBuilder

    for builder in (AscendExtMetadataBuilder, AscendExtMLAMetadataBuilder):
        assert builder.get_cudagraph_support(None, None) == AttentionCGSupport.UNIFORM_BATCH


def test_metadata_reference_persistent_buffers():
    builder, common = _builder(), _common(3)
    meta = builder.build(0, common)
    for name, src in (("query_start_loc", common.query_start_loc), ("seq_lens", common.seq_lens),
                      ("block_table", common.block_table_tensor), ("slot_mapping", common.slot_mapping)):
        assert getattr(meta, name).data_ptr() == src.data_ptr(), f"{name} was copied"
    assert meta.max_seq_len == 40


def test_other_index_dtypes_land_in_the_builders_buffers():
    builder = _builder()
    first = builder.build(0, _common(3, torch.int64))
    second = builder.build(0, _common(2, torch.int64))
    assert first.seq_lens.dtype == torch.int32 and first.seq_lens.tolist() == [5, 17, 40]
    assert second.seq_lens.data_ptr() == first.seq_lens.data_ptr()   # same memory every step
    assert second.query_start_loc.tolist() == [0, 1, 2]


def test_capture_metadata_bound_keys_by_block_table_capacity():
    meta = _builder().build_for_cudagraph_capture(_common(3))
    assert meta.max_seq_len is None   # forward then passes block_table width x block size


def test_capture_bound_reaches_the_op(monkeypatch):
    """forward passes max_seqlen_k = block-table width x cache block size for capture metadata."""
    from ascend_ext.integration import attention_backend as ab

    seen = {}
    monkeypatch.setattr(ab.ops, "paged_attention", lambda *a, **k: seen.update(k))
    impl = ab.AscendExtAttentionImpl(num_heads=4, head_size=8, scale=0.3, num_kv_heads=2)
    meta = _builder().build_for_cudagraph_capture(_common(3))
    kv_cache = torch.zeros(10, 2, 16, 16)   # [blocks, Hkv, block_size, 2 * head_size]
    impl.forward(None, torch.zeros(3, 4, 8), None, None, kv_cache, meta, torch.zeros(3, 4, 8))
    assert seen["max_seqlen_k"] == 6 * 16
