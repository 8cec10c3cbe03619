"""Plain-torch emulation of the torch_npu fused ops that ascend_ext calls (tests only).

No NPU is reachable from this project's machines, so the NPU adapters are exercised
on CPU against these functions, installed as a fake ``torch_npu`` module by
:func:`installed`. Each reproduces the *documented* semantics of the real op and
rejects arguments the documentation forbids, so a wrong argument in an adapter makes
the tests fail. Sources (Ascend Extension for PyTorch API reference and the CANN
ops-transformer docs):

* npu_fused_infer_attention_score - hiascend.com "torch_npu.npu_fused_infer_attention_score"
  (PyTorch 6.0.0 API list, ptaoplist_000837); sparse modes - ops-transformer
  docs/context/sparse_mode_introduction.md.
* npu_fusion_attention - hiascend.com "torch_npu.npu_fusion_attention" (ptaoplist_000850).
* npu_moe_distribute_dispatch / _combine - hiascend.com ptaoplist_002364 and
  "aclnnMoeDistributeDispatch" (CANN 8.2 aclnn API).
* npu_mm_all_reduce_base - hiascend.com "torch_npu.npu_mm_all_reduce_base".

Mask convention (all ops): atten_mask True/1 = the position does NOT take part.
Sparse modes: 0 defaultMask (no mask: everything visible; with a mask, the band
``i - pre_tokens <= j <= i + next_tokens`` aligned top-left AND the mask); 1 allMask
(the full mask); 2 leftUpCausal (j <= i); 3 rightDownCausal (j <= i + Skv - Sq);
4 band, aligned at the bottom-right corner (``p - pre_tokens <= j <= p + next_tokens``,
p = i + Skv - Sq). Modes 2-4 take the compressed 2048x2048 upper-triangular mask and
ignore its values beyond that role. What is not verifiable without hardware is listed
in docs: band alignment of mode 4 and the exact content of dispatch's expand_idx /
ep_recv_counts (only the paired combine reads them; here they carry the emulation's
own bookkeeping).
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch
import torch.distributed as dist

COMPRESSED_MASK_SIZE = 2048
INFER_DTYPES = (torch.float16, torch.bfloat16)
PAGED_BLOCK_SIZES = (128, 256, 384, 512)
MLA_HEADS = (1, 2, 4, 8, 16, 32, 64, 128)
_GROUPS: dict[str, object] = {}


# ---------------------------------------------------------------------- helpers
def _check_compressed_mask(atten_mask, sparse_mode: int) -> None:
    if atten_mask is None:
        raise RuntimeError(f"sparse_mode={sparse_mode} requires the compressed 2048x2048 atten_mask")
    if tuple(atten_mask.shape[-2:]) != (COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE):
        raise RuntimeError(f"sparse_mode={sparse_mode} takes a 2048x2048 compressed mask, got {tuple(atten_mask.shape)}")
    expected = torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool).triu(1)
    if not torch.equal(atten_mask.reshape(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE).bool().cpu(), expected):
        raise RuntimeError("the compressed mask must be the upper triangle (True above the diagonal)")


def _allowed(sq: int, sk: int, sparse_mode: int, pre: int, nxt: int, mask) -> torch.Tensor:
    """bool [Sq, Sk]: True where query i may attend key j (documented sparse-mode rules)."""
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    if sparse_mode == 0:
        if mask is None:
            return torch.ones(sq, sk, dtype=torch.bool)
        return (j >= i - pre) & (j <= i + nxt) & ~mask.bool().reshape(sq, sk).cpu()
    if sparse_mode == 1:
        return ~mask.bool().reshape(sq, sk).cpu()
    _check_compressed_mask(mask, sparse_mode)
    if sparse_mode == 2:
        return j <= i
    p = i + (sk - sq)
    if sparse_mode == 3:
        return j <= p
    if sparse_mode == 4:
        return (j >= p - pre) & (j <= p + nxt)
    raise RuntimeError(f"sparse_mode {sparse_mode} is not emulated")


def _attention(q, k, v, scale, allowed, q_rope=None, k_rope=None, sink=None):
    """q [Sq, N, D], k [Sk, Nkv, D], v [Sk, Nkv, Dv] -> out [Sq, N, Dv], lse [Sq, N] (fp32).
    sink [N]: one more logit per head in the softmax, value 0 (the docs' reference: append
    the sink column, softmax, drop it); lse is taken over the keys and the sink."""
    sq, n, _ = q.shape
    sk, nkv, dv = v.shape
    group = n // nkv
    kk = k.float().repeat_interleave(group, dim=1)
    vv = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("qnd,knd->nqk", q.float(), kk)
    if q_rope is not None:
        s = s + torch.einsum("qnd,knd->nqk", q_rope.float(), k_rope.float().repeat_interleave(group, dim=1))
    s = (s * scale).masked_fill(~allowed.to(s.device), float("-inf"))
    if sink is not None:
        s = torch.cat([s, sink.float().view(n, 1, 1).expand(n, sq, 1)], dim=-1)
        vv = torch.cat([vv, vv.new_zeros(1, n, dv)])
    lse = torch.logsumexp(s, dim=-1)                                  # [N, Sq]
    p = torch.where(torch.isfinite(lse)[..., None], torch.exp(s - lse[..., None]), torch.zeros_like(s))
    out = torch.einsum("nqk,knd->qnd", p, vv)
    return out, lse.transpose(0, 1)


def _split(cumulative, total: int, name: str) -> list[tuple[int, int]]:
    if cumulative is None:
        raise RuntimeError(f"input_layout TND requires {name}")
    ends = [int(x) for x in (cumulative.tolist() if isinstance(cumulative, torch.Tensor) else cumulative)]
    if any(b < a for a, b in zip([0] + ends, ends)) or (ends and ends[-1] > total):
        raise RuntimeError(f"{name} must be cumulative (non-decreasing, ending within {total}), got {ends}")
    return list(zip([0] + ends[:-1], ends))


# ---------------------------------------------------------------- attention ops
def npu_fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
                                    actual_seq_lengths_kv=None, block_table=None, query_rope=None, key_rope=None,
                                    num_heads=1, scale=1.0, pre_tokens=2147483647, next_tokens=2147483647,
                                    input_layout="BSH", num_key_value_heads=0, sparse_mode=0, inner_precise=0,
                                    block_size=0, antiquant_mode=0, softmax_lse_flag=False, key_antiquant_scale=None,
                                    key_antiquant_offset=None, value_antiquant_scale=None, value_antiquant_offset=None,
                                    key_antiquant_mode=0, value_antiquant_mode=0, _learnable_sink=None, **unsupported):
    """Emulates the op for input_layout TND (varlen; paged through block_table), BSND and BNSD.

    Paged TND: key/value are caches [num_blocks, block_size, Nkv*D], actual_seq_lengths the
    cumulative query lengths, actual_seq_lengths_kv the per-sequence key lengths. MLA:
    query_rope [T, N, Dr] and key_rope (cache [num_blocks, block_size, Dr]) add q_rope.k_rope
    to the scores. Returns (attention_out in the query layout, softmax_lse [T, N, 1] for TND /
    [B, N, S, 1] otherwise, natural log, or a 1-element placeholder when not requested).
    """
    if [k for k, v in unsupported.items() if v is not None]:
        raise RuntimeError(f"arguments not emulated: {sorted(unsupported)}")
    nkv = num_key_value_heads or num_heads
    if key.dtype == torch.int8 or value.dtype == torch.int8:
        key, value = _antiquant_kv(query, key, value, nkv, input_layout, block_table, key_antiquant_scale,
                                   key_antiquant_offset, value_antiquant_scale, value_antiquant_offset,
                                   key_antiquant_mode, value_antiquant_mode)
    elif key_antiquant_scale is not None or value_antiquant_scale is not None:
        raise RuntimeError("key/value antiquant scales apply to int8 key/value only")
    if num_heads % nkv or (query_rope is None and num_heads // nkv > 64):
        raise RuntimeError(f"num_heads ({num_heads}) must be a multiple of num_key_value_heads ({nkv}), ratio <= 64")
    for name, t in (("query", query), ("key", key), ("value", value), ("query_rope", query_rope),
                    ("key_rope", key_rope)):
        if t is not None and t.dtype not in INFER_DTYPES:
            raise RuntimeError(f"{name} must be float16 or bfloat16 (int8 needs quantisation scales), got {t.dtype}")
        if t is not None and not t.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
    if block_table is not None and query_rope is None and block_size not in PAGED_BLOCK_SIZES:
        raise RuntimeError(f"page attention block_size must be 128-512 in multiples of 128, got {block_size}")
    if block_table is not None and query_rope is not None and block_size not in (16, 128):
        raise RuntimeError(f"page attention with rope (MLA) takes block_size 16 or 128, got {block_size}")
    learnable_sink = _learnable_sink   # an argument of the _v2 op only
    if learnable_sink is not None and (input_layout != "TND" or learnable_sink.dtype != torch.bfloat16
                                       or tuple(learnable_sink.shape) != (num_heads,)
                                       or value.shape[-1] // nkv > 128):
        raise RuntimeError("learnable_sink: bfloat16 (Q_N,), input_layout TND only, value D <= 128")
    if input_layout == "TND":
        if query.dim() != 3 or query.shape[1] != num_heads:
            raise RuntimeError(f"TND query must be [T, num_heads={num_heads}, D], got {tuple(query.shape)}")
        q_segments = _split(actual_seq_lengths, query.shape[0], "actual_seq_lengths")
        if block_table is not None:
            if key.dim() != 3 or block_size <= 0 or key.shape[1] != block_size:
                raise RuntimeError(f"paged key must be [num_blocks, block_size={block_size}, Nkv*D], got {tuple(key.shape)}")
            kv_lens = [int(x) for x in (actual_seq_lengths_kv.tolist() if isinstance(actual_seq_lengths_kv, torch.Tensor)
                                        else actual_seq_lengths_kv)]
            if len(kv_lens) != len(q_segments):
                raise RuntimeError("actual_seq_lengths_kv needs one (non-cumulative) length per sequence when paged")
        else:
            kv_segments = _split(actual_seq_lengths_kv, key.shape[0], "actual_seq_lengths_kv")
        out = query.new_zeros((query.shape[0], num_heads, value.shape[-1] // nkv if block_table is not None
                               else value.shape[-1]))
        lse = torch.full((query.shape[0], num_heads, 1), float("-inf"))
        for b, (q0, q1) in enumerate(q_segments):
            if block_table is not None:
                length = kv_lens[b]
                blocks = block_table[b, :-(-length // block_size)].long()
                k = key[blocks].reshape(-1, nkv, key.shape[-1] // nkv)[:length]
                v = value[blocks].reshape(-1, nkv, value.shape[-1] // nkv)[:length]
                kr = None if key_rope is None else key_rope[blocks].reshape(-1, 1, key_rope.shape[-1])[:length]
            else:
                k0, k1 = kv_segments[b]
                k, v = key[k0:k1], value[k0:k1]
                kr = None if key_rope is None else key_rope[k0:k1]
            allowed = _allowed(q1 - q0, k.shape[0], sparse_mode, pre_tokens, next_tokens, atten_mask)
            o, l_ = _attention(query[q0:q1], k, v, scale, allowed,
                               None if query_rope is None else query_rope[q0:q1], kr, learnable_sink)
            out[q0:q1] = o.to(out.dtype)
            lse[q0:q1, :, 0] = l_
        return out, (lse if softmax_lse_flag else torch.zeros(1))
    if input_layout == "BNSD" and block_table is not None:   # paged, one query per sequence (decode)
        if query.dim() != 4 or query.shape[1] != num_heads or query.shape[2] != 1:
            raise RuntimeError(f"paged BNSD query must be [B, num_heads={num_heads}, 1, D], got {tuple(query.shape)}")
        kv_lens = [int(x) for x in actual_seq_lengths_kv]
        if len(kv_lens) != query.shape[0] or block_table.shape[0] != query.shape[0]:
            raise RuntimeError("paged BNSD needs one actual_seq_lengths_kv entry and block_table row per batch")
        out = query.new_zeros((query.shape[0], num_heads, 1, value.shape[-1] // nkv))
        lse = torch.full((query.shape[0], num_heads, 1, 1), float("-inf"))
        for b, length in enumerate(kv_lens):
            blocks = block_table[b, :-(-length // block_size)].long()
            k = key[blocks].reshape(-1, nkv, key.shape[-1] // nkv)[:length]
            v = value[blocks].reshape(-1, nkv, value.shape[-1] // nkv)[:length]
            o, l_ = _attention(query[b].transpose(0, 1), k, v, scale, torch.ones(1, length, dtype=torch.bool))
            out[b, :, 0] = o[0].to(out.dtype)
            lse[b, :, 0, 0] = l_[0]
        return out, (lse if softmax_lse_flag else torch.zeros(1))
    if input_layout in ("BSND", "BNSD"):
        to_bsnd = (lambda t: t) if input_layout == "BSND" else (lambda t: t.transpose(1, 2))
        q, k, v = to_bsnd(query), to_bsnd(key), to_bsnd(value)
        outs, lses = [], []
        for b in range(q.shape[0]):
            allowed = _allowed(q.shape[1], k.shape[1], sparse_mode, pre_tokens, next_tokens, atten_mask)
            o, l_ = _attention(q[b], k[b], v[b], scale, allowed)
            outs.append(o.to(query.dtype))
            lses.append(l_.transpose(0, 1)[..., None])
        out = torch.stack(outs)
        return to_bsnd(out), (torch.stack(lses) if softmax_lse_flag else torch.zeros(1))
    raise RuntimeError(f"input_layout {input_layout!r} is not emulated (TND, BSND, BNSD)")


def _antiquant_kv(query, key, value, nkv, input_layout, block_table, k_scale, k_offset, v_scale, v_offset,
                  key_mode, value_mode):
    """Dequantise int8 key/value as the op does with separate key/value antiquant parameters in
    per-channel mode 0 (docs, Q_S = 1: shapes (1, KV_N, 1, D), (1, KV_N, D) or (1, H), dtype of the
    query; offsets optional (symmetric without), shaped like the scales). Returns float key/value."""
    if key.dtype != torch.int8 or value.dtype != torch.int8:
        raise RuntimeError(f"key and value must both be int8, got {key.dtype} / {value.dtype}")
    if k_scale is None or v_scale is None:
        raise RuntimeError("int8 key/value need key_antiquant_scale and value_antiquant_scale")
    if (k_offset is None) != (v_offset is None):
        raise RuntimeError("key_antiquant_offset and value_antiquant_offset are both given or both None")
    if key_mode != 0 or value_mode != 0:
        raise RuntimeError(f"only per-channel antiquant mode 0 is emulated, got {key_mode} / {value_mode}")
    if input_layout == "TND":
        raise RuntimeError("input_layout TND does not support pseudo-quantisation (伪量化)")
    q_s = query.shape[2] if input_layout == "BNSD" else query.shape[1]
    if q_s != 1:
        raise RuntimeError(f"per-channel key/value antiquant needs Q_S = 1, got {q_s}")
    if block_table is None or key.dim() != 3:
        raise RuntimeError("int8 key/value are emulated for page attention caches [num_blocks, block_size, H] only")
    hidden = key.shape[-1]
    for name, t in (("key_antiquant_scale", k_scale), ("value_antiquant_scale", v_scale),
                    ("key_antiquant_offset", k_offset), ("value_antiquant_offset", v_offset)):
        if t is None:
            continue
        if t.dtype != query.dtype:
            raise RuntimeError(f"{name} must have the query dtype {query.dtype} in per-channel mode, got {t.dtype}")
        if tuple(t.shape) not in ((1, nkv, 1, hidden // nkv), (1, nkv, hidden // nkv), (1, hidden), (1,)):
            raise RuntimeError(f"{name} shape {tuple(t.shape)} is not a per-channel / per-tensor shape")
    if k_offset is not None and k_offset.shape != k_scale.shape:
        raise RuntimeError("offsets must have the shape of the scales")

    def dequant(x, scale, offset):
        x = x.float()
        if offset is not None:
            x = x - offset.float().reshape(-1)
        return (x * scale.float().reshape(-1)).to(query.dtype)

    return dequant(key, k_scale, k_offset), dequant(value, v_scale, v_offset)


def npu_fused_infer_attention_score_v2(query, key, value, *, query_rope=None, key_rope=None, atten_mask=None,
                                       actual_seq_qlen=None, actual_seq_kvlen=None, block_table=None,
                                       num_query_heads=1, num_key_value_heads=0, softmax_scale=1.0,
                                       pre_tokens=2147483647, next_tokens=2147483647, input_layout="BSH",
                                       sparse_mode=0, block_size=0, inner_precise=0, return_softmax_lse=False,
                                       learnable_sink=None, **unsupported):
    """The _v2 op: renamed arguments of npu_fused_infer_attention_score (TND emulated). With
    query_rope (MLA) its docs require 1-16 query tokens per batch, num_query_heads in
    1/2/4/.../128, key N 1 with D 512, rope D 64, page attention with block_size 16 or 128."""
    if query_rope is not None:
        if (query_rope is None) != (key_rope is None):
            raise RuntimeError("query_rope and key_rope must be given together")
        if num_query_heads not in MLA_HEADS:
            raise RuntimeError(f"with query_rope num_query_heads must be one of {MLA_HEADS}, got {num_query_heads}")
        if query.shape[-1] != 512 or query_rope.shape[-1] != 64 or key.shape[-1] != 512 or key_rope.shape[-1] != 64:
            raise RuntimeError("with query_rope: query/key D must be 512 and the rope D 64")
        if num_key_value_heads not in (0, 1) or block_table is None:
            raise RuntimeError("with query_rope: key N must be 1 and page attention is required")
        if input_layout == "TND":
            ends = [0] + list(actual_seq_qlen)
            if any(not 1 <= b - a <= 16 for a, b in zip(ends, ends[1:])):
                raise RuntimeError("with query_rope each batch takes 1-16 query tokens")
    return npu_fused_infer_attention_score(
        query, key, value, query_rope=query_rope, key_rope=key_rope, atten_mask=atten_mask,
        actual_seq_lengths=actual_seq_qlen, actual_seq_lengths_kv=actual_seq_kvlen, block_table=block_table,
        num_heads=num_query_heads, num_key_value_heads=num_key_value_heads, scale=softmax_scale,
        pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=input_layout, sparse_mode=sparse_mode,
        block_size=block_size, inner_precise=inner_precise, softmax_lse_flag=return_softmax_lse,
        _learnable_sink=learnable_sink, **unsupported)


def npu_fusion_attention(query, key, value, head_num, input_layout, *, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                         prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                         gen_mask_parallel=True, sync=False, softmax_layout="", sink=None):
    """Emulates TND (varlen; cumulative actual_seq_qlen/actual_seq_kvlen), BSND and BNSD.

    Returns the documented 7 outputs: (attention_out, softmax_max, softmax_sum,
    softmax_out placeholder, seed, offset, numels); softmax_max/sum are [T, N, 8] for TND
    (8 equal copies) laid out TND only with softmax_layout="TND": the default is NTD (the
    [N, T, 8] data in the [T, N, 8]-shaped buffer the meta function declares). Varlen masks
    (sparse_mode 1) must not hide a whole row. The real op gives the row max of the scaled scores and the sum of
    exp(s - max); here the pair is (lse, 1), which has the same lse = max + log(sum).
    sink (float32 [N], the docs' example): one more logit per head in each row's softmax, value 0;
    that max/sum include it is our reading (unverified without hardware).
    """
    if keep_prob != 1.0 or pse is not None or prefix is not None:
        raise RuntimeError("dropout, pse and prefix are not emulated")
    if sink is not None and (sink.dtype != torch.float32 or tuple(sink.shape) != (head_num,)):
        raise RuntimeError(f"sink must be float32 [head_num={head_num}], got {sink.dtype} {tuple(sink.shape)}")
    if input_layout == "TND":
        if actual_seq_qlen is None or actual_seq_kvlen is None:
            raise RuntimeError("TND requires actual_seq_qlen and actual_seq_kvlen")
        q_segments = _split(actual_seq_qlen, query.shape[0], "actual_seq_qlen")
        k_segments = _split(actual_seq_kvlen, key.shape[0], "actual_seq_kvlen")
        if len(q_segments) != len(k_segments):
            raise RuntimeError("actual_seq_qlen and actual_seq_kvlen must list the same batch")
        out = query.new_zeros((query.shape[0], head_num, value.shape[-1]))
        lse = torch.full((query.shape[0], head_num), float("-inf"))
        if softmax_layout not in ("", "TND"):
            raise RuntimeError(f"softmax_layout takes only 'TND', got {softmax_layout!r}")
        for (q0, q1), (k0, k1) in zip(q_segments, k_segments):
            allowed = _allowed(q1 - q0, k1 - k0, sparse_mode, pre_tockens, next_tockens, atten_mask)
            if sparse_mode == 1 and not bool(allowed.any(dim=1).all()):
                raise RuntimeError("varlen atten_mask must not mask a whole row")
            o, l_ = _attention(query[q0:q1], key[k0:k1], value[k0:k1], scale, allowed, sink=sink)
            out[q0:q1] = o.to(out.dtype)
            lse[q0:q1] = l_
        # documented outputs carry max and sum; lse = max + log(sum). Rows that see no key:
        # max -inf, sum 0 here (the real op's value for such rows is unspecified).
        softmax_max = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("-inf")))
        softmax_sum = torch.where(torch.isfinite(lse), torch.ones_like(lse), torch.zeros_like(lse))
        def layout(t):
            t = t[..., None].expand(-1, -1, 8)
            return t.contiguous() if softmax_layout == "TND" else t.transpose(0, 1).contiguous().view(t.shape)

        return out, layout(softmax_max), layout(softmax_sum), torch.zeros(0, dtype=query.dtype), 0, 0, 0
    raise RuntimeError(f"input_layout {input_layout!r} is not emulated here (TND)")


# ------------------------------------------------------------------- comm ops
def register_group(name: str, group) -> str:
    """Stand-in for an HCCL communicator name: the emulated ops look the group up by name."""
    _GROUPS[name] = group
    return name


def _group(name: str):
    if name not in _GROUPS:
        raise RuntimeError(f"unknown communication group name {name!r}")
    return _GROUPS[name]


def npu_mm_all_reduce_base(x1, x2, hcom, *, reduce_op="sum", bias=None, antiquant_scale=None, antiquant_offset=None,
                           x3=None, dequant_scale=None, pertoken_scale=None, comm_quant_scale_1=None,
                           comm_quant_scale_2=None, antiquant_group_size=0, comm_turn=0):
    """AllReduce(x1 @ x2 + bias) over the group named hcom; x1 [M, K], x2 [K, N]."""
    if reduce_op != "sum":
        raise RuntimeError(f"reduce_op {reduce_op!r} is not supported (only 'sum')")
    if x1.dtype not in INFER_DTYPES or x2.dtype != x1.dtype:
        raise RuntimeError(f"x1/x2 must both be float16 or bfloat16 (int8 needs scales), got {x1.dtype}, {x2.dtype}")
    if dist.get_world_size(_group(hcom)) not in (1, 2, 4, 8):
        raise RuntimeError("npu_mm_all_reduce_base runs on 1, 2, 4 or 8 ranks")
    if x1.dim() != 2 or x2.dim() != 2 or x1.shape[1] != x2.shape[0]:
        raise RuntimeError(f"x1 [M, K] @ x2 [K, N] expected, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    out = (x1.float() @ x2.float())
    if bias is not None:
        out = out + bias.float()
    dist.all_reduce(out, group=_group(hcom))
    return out.to(x1.dtype)


def npu_moe_distribute_dispatch(x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, scales=None,
                                x_active_mask=None, expert_scales=None, group_tp="", tp_world_size=0, tp_rank_id=0,
                                expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0, quant_mode=0,
                                global_bs=0, expert_token_nums_type=1):
    """Each (token, expert) pair travels to the expert's rank (EP AllToAllV; no TP domain).

    Returns (expand_x [A, H] grouped by local expert then source rank then token,
    dynamic_scales [A] (quant_mode 2: amax/127 per row), expand_idx [BS*K],
    expert_token_nums [local experts] (counts for type 1, cumulative for type 0),
    ep_recv_counts [ep_world_size * local experts], tp_recv_counts [1], expand_scales [A]).
    A = BS * ep_world_size * min(local experts, K), rows past the received ones are 0.
    """
    if tp_world_size not in (0, 1) or shared_expert_rank_num or x_active_mask is not None or scales is not None:
        raise RuntimeError("TP domain, shared-expert ranks, x_active_mask and smoothing scales are not emulated")
    if quant_mode not in (0, 2):
        raise RuntimeError(f"quant_mode {quant_mode} is not emulated (0 or 2)")
    group = _group(group_ep)
    if dist.get_world_size(group) != ep_world_size or dist.get_rank(group) != ep_rank_id:
        raise RuntimeError("ep_world_size / ep_rank_id do not match the communication group")
    if moe_expert_num % ep_world_size:
        raise RuntimeError("moe_expert_num must be divisible by ep_world_size")
    if (expert_ids < 0).any() or (expert_ids >= moe_expert_num).any():
        raise RuntimeError("expert_ids must lie in [0, moe_expert_num)")
    local = moe_expert_num // ep_world_size
    bs, k = expert_ids.shape
    hidden = x.shape[1]
    flat = expert_ids.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices                   # by expert, then token order
    dest = flat[order] // local
    send_counts = torch.bincount(dest, minlength=ep_world_size)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    rows = x[order // k]
    if quant_mode == 2:
        amax = rows.float().abs().amax(-1).clamp_min(1e-12)
        payload = torch.round(rows.float() * (127.0 / amax)[:, None]).clamp(-127, 127).to(torch.int8)
        row_scales = amax / 127.0
    else:
        payload, row_scales = rows, torch.ones(rows.shape[0])
    meta = torch.stack([flat[order], order, torch.full_like(order, ep_rank_id)], 1)   # expert, slot, source
    weights = (expert_scales.reshape(-1)[order].float() if expert_scales is not None else torch.ones(len(order)))
    n_recv = int(recv_counts.sum())
    split_s, split_r = send_counts.tolist(), recv_counts.tolist()
    r_payload = payload.new_empty((n_recv, hidden))
    r_scales, r_weights = torch.empty(n_recv), torch.empty(n_recv)
    r_meta = meta.new_empty((n_recv, 3))
    for out, inp in ((r_payload, payload), (r_scales, row_scales.float()), (r_weights, weights), (r_meta, meta)):
        dist.all_to_all_single(out, inp.contiguous(), output_split_sizes=split_r, input_split_sizes=split_s, group=group)
    key = (r_meta[:, 0] - ep_rank_id * local) * (ep_world_size + 1) + r_meta[:, 2]   # expert, then source rank
    arrange = torch.sort(key, stable=True).indices
    capacity = bs * ep_world_size * min(local, k)
    expand_x = payload.new_zeros((capacity, hidden))
    expand_x[:n_recv] = r_payload[arrange]
    dynamic_scales = torch.zeros(capacity)
    dynamic_scales[:n_recv] = r_scales[arrange]
    expand_scales = torch.zeros(capacity)
    expand_scales[:n_recv] = r_weights[arrange]
    counts = torch.bincount(r_meta[arrange, 0] - ep_rank_id * local, minlength=local)
    # expand_idx: for each local (token, slot), the row it occupies at its destination
    sent_pos = torch.empty(n_recv, dtype=torch.int64)
    sent_pos[arrange] = torch.arange(n_recv)
    back = torch.empty(len(order), dtype=torch.int64)
    dist.all_to_all_single(back, sent_pos, output_split_sizes=split_s, input_split_sizes=split_r, group=group)
    expand_idx = torch.empty(bs * k, dtype=torch.int32)
    expand_idx[order] = back.to(torch.int32)
    ep_recv_counts = torch.zeros(ep_world_size * local, dtype=torch.int32)
    per = torch.bincount((r_meta[:, 0] - ep_rank_id * local) * ep_world_size + r_meta[:, 2],
                         minlength=local * ep_world_size)
    ep_recv_counts[:] = per.to(torch.int32)
    _DISPATCH_STATE[id(expand_idx)] = (r_meta[arrange, 1], r_meta[arrange, 2], split_s, split_r, order)
    expert_token_nums = counts if expert_token_nums_type == 1 else torch.cumsum(counts, 0)
    return (expand_x, dynamic_scales if quant_mode == 2 else torch.zeros(0), expand_idx, expert_token_nums,
            ep_recv_counts, torch.zeros(1, dtype=torch.int32), expand_scales)


_DISPATCH_STATE: dict[int, tuple] = {}


def npu_moe_distribute_combine(expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, group_ep,
                               ep_world_size, ep_rank_id, moe_expert_num, *, tp_send_counts=None, x_active_mask=None,
                               activation_scale=None, weight_scale=None, group_list=None, expand_scales=None,
                               group_tp="", tp_world_size=0, tp_rank_id=0, expert_shard_type=0, shared_expert_num=1,
                               shared_expert_rank_num=0, global_bs=0, out_dtype=0, comm_quant_mode=0,
                               group_list_type=0):
    """Sends each expert output row back to its token and returns
    x [BS, H] = sum_k expert_scales[t, k] * row(t, k) in the dtype of expand_x."""
    if tp_world_size not in (0, 1) or shared_expert_rank_num:
        raise RuntimeError("TP domain and shared-expert ranks are not emulated")
    state = _DISPATCH_STATE.get(id(expand_idx))
    if state is None:
        raise RuntimeError("expand_idx does not come from npu_moe_distribute_dispatch")
    group = _group(group_ep)
    slots, sources, split_s, split_r, order = state
    n_recv = len(slots)
    bs, k = expert_ids.shape
    # return rows in the order they arrived (by source rank), then place by slot
    by_source = torch.sort(sources, stable=True).indices           # the slot ids travel with the rows
    send_back = expand_x[:n_recv][by_source].contiguous()
    back = send_back.new_empty((len(order), expand_x.shape[1]))
    dist.all_to_all_single(back, send_back, output_split_sizes=split_s, input_split_sizes=split_r, group=group)
    back_slots = torch.empty(len(order), dtype=torch.int64)
    dist.all_to_all_single(back_slots, slots[by_source].contiguous(), output_split_sizes=split_s,
                           input_split_sizes=split_r, group=group)
    out = torch.zeros(bs, expand_x.shape[1])
    w = expert_scales.reshape(-1).float()
    out.index_add_(0, back_slots // k, back.float() * w[back_slots][:, None])
    return out.to(expand_x.dtype)


# ------------------------------------------------------------------ installation
def make_module() -> types.ModuleType:
    """A stand-in ``torch_npu`` module with the emulated ops."""
    module = types.ModuleType("torch_npu")
    module.__ascend_ext_emulation__ = True
    for name in ("npu_fused_infer_attention_score", "npu_fused_infer_attention_score_v2", "npu_fusion_attention",
                 "npu_mm_all_reduce_base",
                 "npu_moe_distribute_dispatch", "npu_moe_distribute_combine"):
        setattr(module, name, globals()[name])
    module.emulation_group_name = lambda group: register_group(f"emulated-{id(group)}", group)
    return module


@contextlib.contextmanager
def installed(module: types.ModuleType | None = None):
    """Make ``import torch_npu`` return the emulation (or ``module``) inside the block."""
    previous = sys.modules.get("torch_npu")
    sys.modules["torch_npu"] = module if module is not None else make_module()
    try:
        yield sys.modules["torch_npu"]
    finally:
        if previous is None:
            sys.modules.pop("torch_npu", None)
        else:
            sys.modules["torch_npu"] = previous
