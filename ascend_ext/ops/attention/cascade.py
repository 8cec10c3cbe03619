"""Cascade attention: a batch whose sequences share a long prefix of cached blocks.

Prefix caching gives sequences with a common prompt the same physical blocks (equal
leading block-table entries). A plain paged pass reads those blocks once per sequence;
the cascade reads them once for the whole batch:

* prefix pass: all Tq queries as ONE sequence over the P shared blocks, non-causal
  (every query sits after the prefix), ``paged_attention`` with Lq = Tq > Lk allowed;
* suffix pass: each sequence's queries over its own blocks after the prefix, causal
  (bottom-right, so the rules are those of the whole sequence);
* :func:`merge_attn_states` of the two by their lse (exact). Attention sinks go with the
  suffix pass only (they join one denominator once).

:func:`plan_cascade` finds P (one host read) and builds the two passes' metadata once per
batch; :func:`cascade_attention` runs them. :func:`cascade_pays` is the default policy:
many sequences and a long shared prefix (``benchmarks/cascade.py`` on CPU and
``benchmarks/attention.py --parts cascade`` on CUDA measure where it pays; the thresholds
below are provisional until they have run on idle machines).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _validate as check
from .api import merge_attn_states, paged_attention

MIN_SEQS = 8          # sequences sharing the prefix
MIN_PREFIX = 256      # shared keys


class CascadePlan(NamedTuple):
    """Metadata of the two passes (tensors on the cache's device)."""

    prefix_len: int                # shared keys (a multiple of the block size)
    prefix_table: torch.Tensor     # int32 [1, P]: the shared blocks
    prefix_seq_lens: torch.Tensor  # int32 [1] = [prefix_len]
    prefix_cu: torch.Tensor        # int32 [2] = [0, Tq]: all queries as one sequence
    suffix_table: torch.Tensor     # int32 [B, W - P] view: each sequence's blocks after the prefix
    suffix_seq_lens: torch.Tensor  # int32 [B] = seq_lens - prefix_len
    num_tokens: int                # Tq


def shared_prefix_blocks(block_table: torch.Tensor, seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         block_size: int, max_seq_len: int | None = None) -> int:
    """Leading blocks every sequence of the batch shares (equal block-table entries), capped so
    that every query lies after them (prefix <= seq_len - Lq for each sequence). One host read."""
    batch = seq_lens.shape[0]
    if batch == 0:
        return 0
    cols = block_table.shape[1] if max_seq_len is None else min(block_table.shape[1], -(-max_seq_len // block_size))
    context = (seq_lens - (cu_seqlens_q[1:] - cu_seqlens_q[:-1])).min() // block_size
    same = (block_table[:, :cols] == block_table[:1, :cols]).all(dim=0)
    run = same.to(torch.int32).cumprod(dim=0).sum()
    return max(0, int(torch.minimum(run, context)))


def cascade_pays(num_seqs: int, prefix_len: int) -> bool:
    """Default policy: the prefix pass replaces ``num_seqs`` reads of the prefix by one."""
    return num_seqs >= MIN_SEQS and prefix_len >= MIN_PREFIX


def plan_cascade(block_table: torch.Tensor, seq_lens: torch.Tensor, cu_seqlens_q: torch.Tensor, num_tokens: int,
                 block_size: int, prefix_blocks: int) -> CascadePlan:
    """The two passes' metadata for a prefix of ``prefix_blocks`` shared blocks (from
    :func:`shared_prefix_blocks`); tensors are views or small new ones on the table's device."""
    check.positive_int("prefix_blocks", prefix_blocks)
    if prefix_blocks > block_table.shape[1]:
        raise ValueError(f"prefix_blocks ({prefix_blocks}) exceeds the block table width {block_table.shape[1]}")
    prefix_len = prefix_blocks * block_size
    device = block_table.device
    return CascadePlan(
        prefix_len=prefix_len, prefix_table=block_table[:1, :prefix_blocks],
        prefix_seq_lens=torch.full((1,), prefix_len, dtype=torch.int32, device=device),
        prefix_cu=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
        suffix_table=block_table[:, prefix_blocks:], suffix_seq_lens=(seq_lens - prefix_len).to(torch.int32),
        num_tokens=num_tokens)


def cascade_attention(q, k_cache, v_cache, plan: CascadePlan, cu_seqlens_q, max_seqlen_q, *, softmax_scale=None,
                      softcap=0.0, out=None, max_seqlen_k=None, sinks=None, kv_layout="rows", **kv_scales):
    """Causal attention of each sequence's queries over its cached context, computed as a
    shared-prefix pass plus a suffix pass merged by lse (see the module docstring).

    Args: as :func:`paged_attention` (causal, no sliding window), with ``plan`` from
    :func:`plan_cascade` in place of the block table and seq_lens; ``max_seqlen_k`` bounds
    the sequences' full lengths; ``kv_scales``: k_scale / v_scale / k_offset / v_offset of a
    quantised cache; ``kv_layout``: of the caches, as in :func:`paged_attention`. Returns out [Tq, Hq, Dv].
    """
    if plan.num_tokens != q.shape[0]:
        raise ValueError(f"the plan is for {plan.num_tokens} query tokens, q has {q.shape[0]}")
    common = dict(softmax_scale=softmax_scale, softcap=softcap, return_lse=True, kv_layout=kv_layout, **kv_scales)
    prefix_out, prefix_lse = paged_attention(q, k_cache, v_cache, plan.prefix_table, plan.prefix_seq_lens,
                                             plan.prefix_cu, q.shape[0], causal=False,
                                             max_seqlen_k=plan.prefix_len, **common)
    suffix_max = None if max_seqlen_k is None else max(0, max_seqlen_k - plan.prefix_len)
    suffix_out, suffix_lse = paged_attention(q, k_cache, v_cache, plan.suffix_table, plan.suffix_seq_lens,
                                             cu_seqlens_q, max_seqlen_q, causal=True, max_seqlen_k=suffix_max,
                                             sinks=sinks, **common)
    merged, _ = merge_attn_states(prefix_out, prefix_lse, suffix_out, suffix_lse)
    if out is None:
        return merged
    out.copy_(merged)
    return out
