"""Plain-torch reference of the MLA ops (any device, float32 arithmetic).

The absorbed MLA decode is multi-query attention with one latent KV head: keys are
the whole cached latent row (kv_lora_rank + rope), values its first kv_lora_rank
channels. It reuses the attention reference's single-sequence kernel.
"""

from __future__ import annotations

import torch

from ..attention.mask_rules import visible_mask
from ..attention.reference import attend, gather_paged


def mla_decode(q, kv_cache, block_table, seq_lens, *, kv_lora_rank, softmax_scale, causal, out, return_lse,
               kv_scale=None):
    batch, s_q, hq, _ = q.shape
    lse = q.new_full((hq, batch * s_q), float("-inf"), dtype=torch.float32) if return_lse else None
    window = (-1, 0) if causal else (-1, -1)
    for b, length in enumerate(seq_lens.tolist()):
        latent = gather_paged(kv_cache, block_table[b], length).unsqueeze(1)   # [L, 1, C + R]
        if kv_scale is not None:   # FP8 cache: dequantise
            latent = latent.float() * kv_scale
        o, l = attend(q[b], latent, latent[..., :kv_lora_rank], softmax_scale,
                      visible_mask(s_q, length, window, q.device))
        out[b] = o.to(out.dtype)
        if lse is not None:
            lse[:, b * s_q:(b + 1) * s_q] = l
    return lse


def concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping):
    n = slot_mapping.shape[0]
    slots = slot_mapping.long()
    keep = slots >= 0
    slots = slots[keep]
    block_size = kv_cache.shape[1]
    rank = kv_c.shape[1]
    rows = kv_cache[slots // block_size, slots % block_size]
    rows[:, :rank] = kv_c[:n][keep]
    rows[:, rank:] = k_pe[:n][keep]
    kv_cache[slots // block_size, slots % block_size] = rows
