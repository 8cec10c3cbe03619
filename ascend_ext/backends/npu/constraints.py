"""Documented limits of the torch_npu operators the adapters call (torch-npu 2.10.0.post4,
``torch_npu/_op_plugin_docs.py``), checked before a call so a violation is a clear
ValueError here instead of an opaque CANN error (or a wrong result) on the device.
docs/ascend.md lists each rule with its source and what stays unverified without hardware.
"""

from __future__ import annotations

import torch

# npu_fused_infer_attention_score(_v2), page attention: "block_size最小为128, 最大为512, 且要求是128的倍数"
PAGED_BLOCK_SIZES = (128, 256, 384, 512)
# ... with query_rope/key_rope (MLA): "必须开启PageAttention, 此时block_size支持16、128"
MLA_BLOCK_SIZES = (16, 128)
# the one KV-cache block size both serve: what the NPU platform configures
NPU_BLOCK_SIZE = 128
# query/key/value: "数据类型支持float16、bfloat16、int8" (int8 needs quantisation scales we do not pass)
INFER_DTYPES = (torch.float16, torch.bfloat16)
# npu_fusion_attention: float16, bfloat16, float32
FUSION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INT8_HEAD_DIM_ALIGN = 32        # "query、key、value输入类型包含int8时, D轴需要32对齐"
MAX_GQA_RATIO = 64              # "num_heads与num_key_value_heads的比值不能大于64"
MAX_PAGED_HIDDEN = 65535        # (blocknum, blocksize, H) caches: KV_N * D must not exceed 65535
# _v2 with rope: "query的s为1-16、n为1/2/4/8/16/32/64/128", key D 512, rope D 64
MLA_HEADS = (1, 2, 4, 8, 16, 32, 64, 128)
MLA_MAX_QUERY_LEN = 16
MLA_LATENT_DIM = 512
MLA_ROPE_DIM = 64
# npu_mm_all_reduce_base: float16 / bfloat16 (int8 only with quantisation scales), "支持1、2、4、8卡"
MM_ALLREDUCE_DTYPES = (torch.float16, torch.bfloat16)
MM_ALLREDUCE_WORLD_SIZES = (1, 2, 4, 8)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_dtype(name: str, tensor: torch.Tensor, allowed, op: str) -> None:
    if tensor.dtype not in allowed:
        raise ValueError(f"{op} takes {name} in {_dtype_names(allowed)} only, got {tensor.dtype}")


def check_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, block_size: int, num_heads: int,
                          num_kv_heads: int, head_dim: int) -> None:
    op = "npu_fused_infer_attention_score"
    check_dtype("query", q, INFER_DTYPES, op)
    check_dtype("key/value cache", k_cache, INFER_DTYPES, op)
    _check_page_attention(op, block_size, num_heads, num_kv_heads, head_dim)


def _check_page_attention(op: str, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    if block_size not in PAGED_BLOCK_SIZES:
        raise ValueError(f"{op} page attention needs block_size in {PAGED_BLOCK_SIZES} (multiples of 128 up to "
                         f"512), got {block_size}; serve with --block-size {NPU_BLOCK_SIZE}")
    if num_heads % num_kv_heads or num_heads // num_kv_heads > MAX_GQA_RATIO:
        raise ValueError(f"{op} needs num_heads ({num_heads}) to be a multiple of num_key_value_heads "
                         f"({num_kv_heads}) with a ratio of at most {MAX_GQA_RATIO}")
    if num_kv_heads * head_dim > MAX_PAGED_HIDDEN:
        raise ValueError(f"{op} with [num_blocks, block_size, H] caches needs num_kv_heads * head_dim <= "
                         f"{MAX_PAGED_HIDDEN}, got {num_kv_heads} * {head_dim}")


def check_int8_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, block_size: int, num_heads: int,
                               num_kv_heads: int, head_dim: int) -> None:
    """int8 page attention with per-channel antiquant (one query per sequence): "query、key、value
    输入类型包含int8时, D轴需要32对齐"; int8 block_size "需要32对齐" (the 128-512 rule covers it)."""
    op = "npu_fused_infer_attention_score"
    check_dtype("query", q, INFER_DTYPES, op)
    check_dtype("key/value cache", k_cache, (torch.int8,), f"{op} with antiquant scales")
    _check_page_attention(op, block_size, num_heads, num_kv_heads, head_dim)
    if head_dim % INT8_HEAD_DIM_ALIGN:
        raise ValueError(f"npu_fused_infer_attention_score with int8 key/value needs the head dim to be a multiple "
                         f"of {INT8_HEAD_DIM_ALIGN}, got {head_dim}")


# npu_fused_infer_attention_score_v2 learnable_sink: "仅支持TND、NTD_TND; 仅支持value的d小于等于128"
SINK_MAX_VALUE_DIM = 128


def check_learnable_sink(value_dim: int) -> None:
    if value_dim > SINK_MAX_VALUE_DIM:
        raise ValueError(f"npu_fused_infer_attention_score_v2 takes learnable_sink only with value head dims <= "
                         f"{SINK_MAX_VALUE_DIM}, got {value_dim}")


def check_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, kv_lora_rank: int, block_size: int) -> None:
    op = "npu_fused_infer_attention_score_v2 (MLA)"
    check_dtype("q", q, INFER_DTYPES, op)
    check_dtype("kv_cache", kv_cache, INFER_DTYPES, op)
    rope = q.shape[-1] - kv_lora_rank
    if kv_lora_rank != MLA_LATENT_DIM or rope != MLA_ROPE_DIM:
        raise ValueError(f"{op} needs kv_lora_rank {MLA_LATENT_DIM} and rope dim {MLA_ROPE_DIM}, got "
                         f"{kv_lora_rank} and {rope}")
    if q.shape[1] > MLA_MAX_QUERY_LEN:
        raise ValueError(f"{op} takes 1-{MLA_MAX_QUERY_LEN} query tokens per request, got {q.shape[1]}")
    if block_size not in MLA_BLOCK_SIZES:
        raise ValueError(f"{op} needs block_size in {MLA_BLOCK_SIZES}, got {block_size}; serve with "
                         f"--block-size {NPU_BLOCK_SIZE}")


def mla_head_groups(heads: int) -> list[tuple[int, int, int]]:
    """(first head, heads in the group, padded count) covering ``heads``: groups of 128, the
    last padded with zero heads to the next supported count (1, 2, 4, ..., 128)."""
    groups = []
    for start in range(0, heads, MLA_HEADS[-1]):
        n = min(MLA_HEADS[-1], heads - start)
        groups.append((start, n, next(h for h in MLA_HEADS if h >= n)))
    return groups


def check_mm_allreduce(x: torch.Tensor, weight: torch.Tensor, world: int) -> None:
    op = "npu_mm_all_reduce_base"
    check_dtype("x", x, MM_ALLREDUCE_DTYPES, op)
    check_dtype("weight", weight, MM_ALLREDUCE_DTYPES, op)
    if world not in MM_ALLREDUCE_WORLD_SIZES:
        raise ValueError(f"{op} runs on {MM_ALLREDUCE_WORLD_SIZES} ranks only, the group has {world}")


def check_block_size(block_size: int | None, use_mla: bool) -> None:
    """The KV-cache block size the NPU platform may serve with (both paged ops accept 128)."""
    allowed = MLA_BLOCK_SIZES if use_mla else PAGED_BLOCK_SIZES
    if block_size not in allowed:
        raise ValueError(f"ascend_ext on NPU needs a KV-cache block size in {allowed} "
                         f"({'MLA' if use_mla else 'attention'} page attention), got {block_size}; "
                         f"use --block-size {NPU_BLOCK_SIZE}")
