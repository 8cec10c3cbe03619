"""MLA decode adapter: npu_fused_infer_attention_score_v2 with query_rope / key_rope, TND.

The op's MLA mode (documented for torch-npu 2.10) takes latent 512 + rope 64, 1-16 query
tokens per request, 1/2/4/.../128 query heads and page attention with block_size 16 or
128 (:mod:`.constraints`). Other head counts run in groups of 128 heads, the last group
padded with zero heads to the next supported count (as vllm-ascend pads). The op takes the
latent and rope parts as separate contiguous caches (vllm-ascend keeps two); our op
contract has one combined [num_blocks, block_size, rank + rope] cache, so the adapter
splits it into contiguous copies per call - a full read + write of the cache; serving on
NPU should keep split caches (noted in docs/ascend.md).
"""

from __future__ import annotations

import torch

from . import constraints, torch_npu
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
    constraints.check_mla_decode(q, kv_cache, kv_lora_rank, block_size)
    tokens = batch * s_q
    latent = kv_cache[..., :kv_lora_rank].contiguous()
    rope = kv_cache[..., kv_lora_rank:].contiguous()
    multi = causal and s_q > 1
    common = dict(key_rope=rope, block_table=block_table, block_size=block_size, input_layout="TND",
                  actual_seq_qlen=[s_q * (b + 1) for b in range(batch)], actual_seq_kvlen=seq_lens.tolist(),
                  num_key_value_heads=1, softmax_scale=softmax_scale, sparse_mode=3 if multi else 0,
                  atten_mask=compressed_causal_mask(str(q.device)) if multi else None,
                  return_softmax_lse=return_lse)
    q_tokens = q.reshape(tokens, heads, width)
    result = q.new_empty((tokens, heads, kv_lora_rank))
    lse = torch.empty((tokens, heads), dtype=torch.float32, device=q.device) if return_lse else None
    for start, n, padded in constraints.mla_head_groups(heads):
        group = q_tokens[:, start:start + n]
        if padded > n:
            group = torch.cat([group, group.new_zeros((tokens, padded - n, width))], dim=1)
        part, part_lse = torch_npu().npu_fused_infer_attention_score_v2(
            group[..., :kv_lora_rank].contiguous(), latent, latent, query_rope=group[..., kv_lora_rank:].contiguous(),
            num_query_heads=padded, **common)
        result[:, start:start + n] = part[:, :n]
        if return_lse:
            lse[:, start:start + n] = part_lse[:, :n, 0]
    out.copy_(result.view(batch, s_q, heads, kv_lora_rank))
    if not return_lse:
        return None
    return lse.t().contiguous()   # [B * s_q, Hq] -> [Hq, B * s_q]
