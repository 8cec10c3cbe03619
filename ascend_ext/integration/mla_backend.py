"""vLLM MLA backend "ASCEND_EXT_MLA" and its prefill backend (no math: ops calls only).

vLLM's MLA layer (``MLAAttention.forward_impl``) absorbs W_UK into the decode
queries and applies W_UV afterwards; the shared ``MLACommonImpl.forward_mha``
decompresses K/V for prefill and runs the prefill backend per new-token batch and
per cached-context chunk. We plug in at three points:

* cache writes -> :func:`ascend_ext.ops.concat_and_cache_mla`;
* decode (``forward_mqa``, 1..s_q uniform query tokens) -> :func:`ascend_ext.ops.mla_decode`;
* prefill (MHA over decompressed K/V) -> :func:`ascend_ext.ops.flash_attn_varlen`,
  causal for the new tokens, non-causal with lse for cached-context chunks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from vllm.model_executor.layers.attention.mla_attention import (MLACommonBackend, MLACommonImpl,
                                                                MLACommonMetadata, MLACommonMetadataBuilder,
                                                                QueryLenSupport)
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, MultipleOf
from vllm.v1.attention.backends.mla.prefill.base import MLAPrefillBackend

from .. import ops
from . import MLA_BACKEND_NAME, trace


class AscendExtMLABackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto"]

    @staticmethod
    def get_name() -> str:
        return MLA_BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[AscendExtMLAImpl]:
        return AscendExtMLAImpl

    @staticmethod
    def get_builder_cls() -> type[AscendExtMLAMetadataBuilder]:
        return AscendExtMLAMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return []

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        return [MultipleOf(16)]


class AscendExtMLAMetadataBuilder(MLACommonMetadataBuilder[MLACommonMetadata]):
    # mla_decode takes s_q > 1 query tokens per request (speculative / multi-token decode)
    query_len_support: ClassVar[QueryLenSupport] = QueryLenSupport.UNIFORM
    # Full CUDA graphs for uniform decode batches: the decode metadata are views of vLLM's
    # persistent int32 buffers, and mla_decode sizes its key range from the block table's
    # capacity (a shape), never from device values, so a replay with longer sequences is exact.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH


class AscendExtMLAImpl(MLACommonImpl[MLACommonMetadata]):
    can_return_lse_for_decode: bool = True

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, **mla_args) -> None:
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"ascend_ext MLA serves decoder layers only, got {attn_type}")
        if alibi_slopes is not None or sliding_window is not None or logits_soft_cap:
            raise NotImplementedError("ascend_ext MLA does not support ALiBi, sliding windows or logit softcap")
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                         kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name, **mla_args)
        self.supports_quant_query_input = False
        self._use_flashinfer_concat_mla_k = False

    def forward_mqa(self, q, kv_c_and_k_pe_cache: torch.Tensor, attn_metadata: MLACommonMetadata,
                    layer) -> tuple[torch.Tensor, torch.Tensor | None]:
        trace.note("mla_decode")
        if isinstance(q, tuple):
            q = torch.cat(q, dim=-1)
        decode = attn_metadata.decode
        num_reqs = attn_metadata.num_decodes
        tokens, heads, width = q.shape
        s_q = tokens // num_reqs
        with ops.trusted_inputs():
            result = ops.mla_decode(
                q.reshape(num_reqs, s_q, heads, width), kv_c_and_k_pe_cache,
                decode.block_table.to(torch.int32), decode.seq_lens.to(torch.int32),
                kv_lora_rank=self.kv_lora_rank, softmax_scale=self.scale, causal=bool(attn_metadata.causal),
                return_lse=self.need_to_return_lse_for_decode)
        out, lse = result if self.need_to_return_lse_for_decode else (result, None)
        if lse is not None:   # ops: [H, tokens] -> vLLM: [tokens, H]
            lse = lse.t().contiguous()
        return out.view(tokens, heads, self.kv_lora_rank), lse

    def do_kv_cache_update(self, kv_c_normed: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor, kv_cache_dtype: str, k_scale: torch.Tensor) -> None:
        if kv_cache.numel() == 0:   # profiling run
            return
        with ops.trusted_inputs():
            ops.concat_and_cache_mla(kv_c_normed, k_pe.reshape(k_pe.shape[0], -1), kv_cache,
                                     slot_mapping.flatten())


class AscendExtMLAPrefillBackend(MLAPrefillBackend):
    """MLA prefill (MHA over decompressed K/V) through ops.flash_attn_varlen."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]

    @staticmethod
    def get_name() -> str:
        return MLA_BACKEND_NAME

    def supports_out(self) -> bool:
        return True

    def _attend(self, q, k, v, cu_q, cu_k, max_q, max_k, causal, return_lse, out):
        trace.note("mla_prefill")
        with ops.trusted_inputs():
            return ops.flash_attn_varlen(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q),
                                         int(max_k), softmax_scale=self.scale, causal=causal,
                                         return_lse=return_lse, out=out)

    def run_prefill_new_tokens(self, q, k, v, return_softmax_lse, out=None, output_scale=None):
        if output_scale is not None:
            raise NotImplementedError("ascend_ext MLA prefill does not fuse output quantization")
        meta = self._prefill_metadata
        return self._attend(q, k, v, meta.query_start_loc, meta.query_start_loc, meta.max_query_len,
                            meta.max_query_len, True, return_softmax_lse, out)

    def run_prefill_context_chunk(self, chunk, q, k, v, out=None):
        return self._attend(q, k, v, chunk.query_start_loc, chunk.cu_seq_lens, chunk.max_query_len,
                            chunk.max_seq_len, False, True, out)
