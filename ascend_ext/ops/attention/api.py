"""Public attention ops: validate, normalise, call the implementation bound to the device
(eager) or the ``torch.ops.ascend_ext`` custom op (under torch.compile)."""

from __future__ import annotations

import torch

from .. import _validate as check
from .._contract import require
from .._dispatch import bound
from .._library import compiling, mask_to_args
from . import kv_quant, kv_layout as layouts
from .tile_mask import TileMask


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      softmax_scale=None, causal=False, window_size=(-1, -1),
                      mask: TileMask | None = None, return_lse=False, softcap=0.0, out=None, sinks=None):
    """Attention over packed variable-length sequences (no KV cache).

    Args:
        q: [Tq, Hq, D] float16/bfloat16/float32, sequences packed back to back.
        k: [Tk, Hkv, D] and v: [Tk, Hkv, Dv], same dtype and device as q;
            Hq % Hkv == 0 (grouped-query attention: query head h uses KV head h // (Hq/Hkv)).
        cu_seqlens_q, cu_seqlens_k: int32 [B+1] offsets of each sequence (0 first,
            non-decreasing, last = Tq / Tk).
        max_seqlen_q, max_seqlen_k: upper bounds of the per-sequence lengths.
        softmax_scale: defaults to D ** -0.5.
        causal: bottom-right aligned (query i sees keys j <= i + Lk - Lq).
        window_size: (left, right), -1 = unbounded (flash-attn semantics; causal sets right = 0).
        mask: optional :class:`TileMask` of shape [Lq, Lk] applied to every sequence
            (each must have exactly those lengths), combined with causal/window by AND.
        return_lse: also return float32 natural-log logsumexp [Hq, Tq].
        softcap: if > 0, scores become softcap * tanh(scores / softcap).
        out: optional preallocated [Tq, Hq, Dv] output (dtype of q).
        sinks: optional float32 [Hq] attention-sink logits (gpt-oss): a virtual key per
            query head with logit sinks[h] (natural log, compared with the scaled, softcapped
            scores; -inf = none) and value 0. It joins each row's softmax denominator only:
            out = sum_j e^{s_j} v_j / (sum_j e^{s_j} + e^{sink}), lse = log(sum_j e^{s_j} + e^{sink}).

    Returns:
        out [Tq, Hq, Dv] (dtype of q), plus lse when ``return_lse``. Rows that see no
        key give out 0 and lse -inf (lse = the sink with sinks: the merge of such a
        result with another over disjoint keys stays exact).
    """
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k", k, ndim=3)
    check.tensor("v", v, ndim=3)
    check.same_dtype("q", q, k=k, v=v)
    check.same_device("q", q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    check.dim_equals("k", k, 2, q.shape[2], "the head dim of q")
    check.dim_equals("v", v, 0, k.shape[0], "the token count of k")
    check.dim_equals("v", v, 1, k.shape[1], "the KV head count of k")
    check.gqa_heads("q", q.shape[1], "k", k.shape[1])
    batch = check.cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    check.cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], batch)
    check.max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q, "cu_seqlens_q")
    check.max_seqlen("max_seqlen_k", max_seqlen_k, cu_seqlens_k, "cu_seqlens_k")
    scale = check.softmax_scale(softmax_scale, q.shape[2])
    window = check.window(window_size, causal)
    softcap = _softcap(softcap)
    sinks = check.sinks(sinks, q)
    if mask is not None:
        _check_mask(mask, q, cu_seqlens_q, cu_seqlens_k)
        mask = mask if mask.device == q.device else mask.to(q.device)
    out = check.output("out", out, (q.shape[0], q.shape[1], v.shape[2]), q)
    if compiling():
        lse = _lse_buffer(q, return_lse)
        torch.ops.ascend_ext.flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                               scale, window[0], window[1], softcap, out, lse, sinks=sinks,
                                               **mask_to_args(mask))
    else:
        impl = bound("flash_attn_varlen", q.device.type)
        require(impl, q.device.type, dtype=q.dtype, head_dim=q.shape[2], softcap=softcap, mask=mask is not None,
                window=window, sinks=sinks is not None)
        lse = impl.fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      softmax_scale=scale, window=window, mask=mask, softcap=softcap,
                      out=out, return_lse=return_lse, sinks=sinks)
    return (out, lse) if return_lse else out


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, *,
                    softmax_scale=None, causal=True, window_size=(-1, -1), return_lse=False,
                    softcap=0.0, out=None, max_seqlen_k=None, k_scale=None, v_scale=None, k_offset=None,
                    v_offset=None, sinks=None, kv_layout="rows"):
    """Attention of new queries over a paged KV cache (decode and chunked prefill).

    Args:
        q: [Tq, Hq, D] float16/bfloat16/float32; the queries of sequence b are its
            last Lq_b positions (Lq_b = cu_seqlens_q[b+1] - cu_seqlens_q[b]).
        k_cache: [num_blocks, block_size, Hkv, D], v_cache: [num_blocks, block_size, Hkv, Dv],
            dtype of q; any strides with the last dim contiguous (vLLM views work). Or both
            quantised (float8_e4m3fn or int8) with ``k_scale`` / ``v_scale`` (and for int8
            optional ``k_offset`` / ``v_offset``): see :mod:`.kv_quant` for the schemes.
        block_table: int32 [B, max_blocks]; entries past a sequence's last block are ignored.
        seq_lens: int32 [B], keys of each sequence, the new ones included (already cached).
        cu_seqlens_q: int32 [B+1] query offsets. Lq_b may exceed seq_lens[b] (as in
            :func:`flash_attn_varlen`): without causal/window every row sees all keys (e.g. the
            shared-prefix pass of cascade attention); causal rows before the first key see none.
        max_seqlen_q: upper bound of Lq_b. max_seqlen_k: optional upper bound of seq_lens.
        causal, window_size, softmax_scale, softcap, return_lse, out, sinks: as in
            :func:`flash_attn_varlen` (causal bottom-right, so decode sees the whole cache).
        kv_layout: how the caches store their blocks: "rows" (vLLM's), "pairs" (values as key
            pairs interleaved per dim) or "tiles" (each 32-key step of a block as contiguous AMX
            tiles, keys then values; k_cache / v_cache the halves of one combined cache); both
            need bfloat16 (see :mod:`.kv_layout`). As written by :func:`reshape_and_cache` with
            the same kv_layout.

    Returns:
        out [Tq, Hq, Dv], plus lse float32 [Hq, Tq] when ``return_lse``.
    """
    fast = not check.value_checks_enabled() and _paged_structure_ok(
        q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k, out)
    if not fast:
        _check_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    scale = check.softmax_scale(softmax_scale, q.shape[2])
    window = check.window(window_size, causal)
    softcap = _softcap(softcap)
    sinks = check.sinks(sinks, q)
    if out is None or not fast:
        out = check.output("out", out, (q.shape[0], q.shape[1], v_cache.shape[3]), q)
    if kv_layout != "rows":
        layouts.check(kv_layout, k_cache, v_cache)
        check.same_dtype("q", q, k_cache=k_cache)
    scales = None
    if k_cache.dtype != q.dtype or k_scale is not None or v_scale is not None or k_offset is not None \
            or v_offset is not None:
        scales = kv_quant.normalize(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset,
                                    check_values=check.value_checks_enabled())
    if compiling():
        lse = _lse_buffer(q, return_lse)
        torch.ops.ascend_ext.paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                                             -1 if max_seqlen_k is None else max_seqlen_k, scale, window[0],
                                             window[1], softcap, out, lse, sinks=sinks, kv_layout=kv_layout,
                                             **kv_quant.schema_args(scales, k_scale, v_scale, k_offset, v_offset))
    else:
        impl = bound("paged_attention", q.device.type)
        require(impl, q.device.type, dtype=q.dtype, head_dim=q.shape[2], softcap=softcap, window=window,
                kv_quant=scales and scales.kind, sinks=sinks is not None, kv_layout=kv_layout)
        lse = impl.fn(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q,
                      softmax_scale=scale, window=window, softcap=softcap, out=out,
                      return_lse=return_lse, max_seqlen_k=max_seqlen_k, kv_scales=scales, sinks=sinks,
                      kv_layout=kv_layout)
    return (out, lse) if return_lse else out


def _paged_structure_ok(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
                        out) -> bool:
    """Every shape/dtype/device rule of :func:`paged_attention` in one expression (the hot
    decode path); on False, :func:`_check_paged` finds the rule and raises its message."""
    try:
        dtype, dev, qs, ks, vs, i32 = q.dtype, q.device, q.shape, k_cache.shape, v_cache.shape, torch.int32
        return (len(qs) == 3 and len(ks) == 4 and len(vs) == 4 and block_table.dim() == 2 and seq_lens.dim() == 1
                and cu_seqlens_q.dim() == 1 and dtype in check.FLOAT_DTYPES
                and (k_cache.dtype == dtype or k_cache.dtype in kv_quant.KINDS)
                and v_cache.dtype == k_cache.dtype and block_table.dtype == i32 and seq_lens.dtype == i32
                and cu_seqlens_q.dtype == i32 and k_cache.device == dev and v_cache.device == dev
                and block_table.device == dev and seq_lens.device == dev and cu_seqlens_q.device == dev
                and ks[3] == qs[2] and vs[0] == ks[0] and vs[1] == ks[1] and vs[2] == ks[2]
                and k_cache.stride(3) == 1 and v_cache.stride(3) == 1 and ks[2] > 0 and qs[1] % ks[2] == 0
                and seq_lens.shape[0] == block_table.shape[0] == cu_seqlens_q.shape[0] - 1
                and type(max_seqlen_q) is int and max_seqlen_q >= 0
                and (max_seqlen_k is None or type(max_seqlen_k) is int and max_seqlen_k >= 0)
                and (out is None or out.shape == (qs[0], qs[1], vs[3]) and out.dtype == dtype and out.device == dev))
    except (AttributeError, TypeError, IndexError):
        return False


def _check_paged(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k) -> None:
    """The checks of :func:`paged_attention`, each with its message (value checks included
    outside :func:`trusted_inputs`)."""
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_cache", k_cache, ndim=4)
    check.tensor("v_cache", v_cache, ndim=4)
    kv_quant.check_cache_dtypes(k_cache, v_cache, q.dtype)
    check.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,))
    check.tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32,))
    check.same_device("q", q, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                      seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q)
    _check_cache_pair(k_cache, v_cache, q.shape[2])
    check.gqa_heads("q", q.shape[1], "k_cache", k_cache.shape[2])
    batch = check.cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    check.dim_equals("seq_lens", seq_lens, 0, batch, "the batch size B of cu_seqlens_q")
    check.dim_equals("block_table", block_table, 0, batch, "the batch size B of cu_seqlens_q")
    check.max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q, "cu_seqlens_q")
    if max_seqlen_k is not None:
        check.positive_int("max_seqlen_k", max_seqlen_k, allow_zero=True)
    if check.value_checks_enabled():
        check.paged_values(block_table, seq_lens, k_cache.shape[0], k_cache.shape[1], max_seqlen_k=max_seqlen_k)


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, *, k_scale=None, v_scale=None, k_offset=None,
                      v_offset=None, kv_layout="rows") -> None:
    """Write new tokens into the paged cache in place.

    key [T, Hkv, D], value [T, Hkv, Dv]; caches [num_blocks, block_size, Hkv, D/Dv];
    slot_mapping int32/int64 [N] with N <= T: token t (t < N) goes to block
    ``slot // block_size``, offset ``slot % block_size``; slot < 0 is skipped (padding).
    Tokens past N are ignored (vLLM pads the token dim). Values are cast to the cache dtype;
    float8_e4m3fn / int8 caches are quantised with ``k_scale`` / ``v_scale`` (and int8's
    optional offsets) as :mod:`.kv_quant` defines. ``kv_layout="pairs"`` / ``"tiles"`` store
    the blocks as :mod:`.kv_layout` defines (bfloat16 caches; read back with the same kv_layout).
    """
    cache_dtypes = check.FLOAT_DTYPES + tuple(kv_quant.KINDS)
    check.tensor("key", key, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("value", value, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_cache", k_cache, ndim=4, dtypes=cache_dtypes)
    check.tensor("v_cache", v_cache, ndim=4, dtypes=cache_dtypes)
    check.same_dtype("k_cache", k_cache, v_cache=v_cache)
    check.same_device("key", key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    _check_cache_pair(k_cache, v_cache, key.shape[2])
    check.dim_equals("key", key, 1, k_cache.shape[2], "the KV head count of k_cache")
    check.dim_equals("value", value, 0, key.shape[0], "the token count of key")
    check.dim_equals("value", value, 1, key.shape[1], "the KV head count of key")
    check.dim_equals("value", value, 2, v_cache.shape[3], "the head dim of v_cache")
    check.slots(slot_mapping, key.shape[0], k_cache.shape[0] * k_cache.shape[1])
    scales = kv_quant.normalize(k_cache, v_cache, k_scale, v_scale, k_offset, v_offset,
                                check_values=check.value_checks_enabled())
    if kv_layout != "rows":
        layouts.check(kv_layout, k_cache, v_cache)
    if compiling():
        torch.ops.ascend_ext.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, kv_layout=kv_layout,
                                               **kv_quant.schema_args(scales, k_scale, v_scale, k_offset, v_offset))
    else:
        impl = bound("reshape_and_cache", key.device.type)
        require(impl, key.device.type, kv_layout=kv_layout)
        impl.fn(key, value, k_cache, v_cache, slot_mapping, kv_scales=scales, kv_layout=kv_layout)


def merge_attn_states(out_a, lse_a, out_b, lse_b):
    """Merge two attention results over disjoint key sets into the full one.

    out_* [T, H, D] (same float dtype), lse_* float32 [H, T] (natural log). An empty side
    (no key seen) is marked lse -inf (ours) or +inf (vLLM's and FlashMLA's convention for
    an empty split): both are accepted, and the matching out rows are then ignored, even if
    NaN. A NaN lse raises ValueError (a value check: skipped inside ``trusted_inputs()``,
    where the result for such rows is undefined).
    Returns (out [T, H, D] in the dtype of out_a, lse float32 [H, T]); rows empty on both
    sides give out 0 and lse -inf (never +inf).
    """
    check.tensor("out_a", out_a, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("out_b", out_b, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("lse_a", lse_a, ndim=2, dtypes=(torch.float32,))
    check.tensor("lse_b", lse_b, ndim=2, dtypes=(torch.float32,))
    check.same_dtype("out_a", out_a, out_b=out_b)
    check.same_device("out_a", out_a, out_b=out_b, lse_a=lse_a, lse_b=lse_b)
    if out_b.shape != out_a.shape:
        raise ValueError(f"out_b must have the shape of out_a {tuple(out_a.shape)}, got {tuple(out_b.shape)}")
    expected = (out_a.shape[1], out_a.shape[0])
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if tuple(lse.shape) != expected:
            raise ValueError(f"{name} must have shape [H, T] = {list(expected)}, got {tuple(lse.shape)}")
        if check.value_checks_enabled() and bool(torch.isnan(lse).any()):
            h, t = (int(i) for i in torch.isnan(lse).nonzero()[0])
            raise ValueError(f"{name}[{h}, {t}] is NaN; an lse is finite, -inf or +inf (both infinities mark an "
                             "empty side)")
    if compiling():
        return torch.ops.ascend_ext.merge_attn_states(out_a, lse_a, out_b, lse_b)
    return bound("merge_attn_states", out_a.device.type).fn(out_a, lse_a, out_b, lse_b)


def split_kv_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (k_cache, v_cache) [num_blocks, block_size, Hkv, D] of a vLLM-style
    combined cache [num_blocks, Hkv, block_size, 2 * D] (any physical layout)."""
    check.tensor("kv_cache", kv_cache, ndim=4)
    if kv_cache.shape[3] != 2 * head_size:
        raise ValueError(f"kv_cache.shape[3] must be 2 * head_size = {2 * head_size}, got {tuple(kv_cache.shape)}")
    k_cache, v_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return k_cache, v_cache


# ----------------------------------------------------------------------- helpers
def _lse_buffer(q, return_lse: bool):
    return torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device) if return_lse else None


def _softcap(value) -> float:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"softcap must be a float >= 0 (0 = off), got {value!r}")
    return float(value)


def _check_cache_pair(k_cache, v_cache, head_dim: int) -> None:
    check.dim_equals("k_cache", k_cache, 3, head_dim, "the head dim of the queries/keys")
    for dim, what in ((0, "num_blocks"), (1, "block_size"), (2, "KV head count")):
        check.dim_equals("v_cache", v_cache, dim, k_cache.shape[dim], f"the {what} of k_cache")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head) dim, got strides {cache.stride()}")


def _check_mask(mask, q, cu_seqlens_q, cu_seqlens_k) -> None:
    if not isinstance(mask, TileMask):
        raise TypeError(f"mask must be a TileMask, got {type(mask).__name__}")
    if check.value_checks_enabled():
        lq = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).cpu()
        lk = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).cpu()
        if bool((lq != mask.seqlen_q).any()) or bool((lk != mask.seqlen_k).any()):
            raise ValueError(
                f"mask is {mask.seqlen_q}x{mask.seqlen_k} but the sequences have query lengths "
                f"{lq.tolist()} and key lengths {lk.tolist()}; a TileMask applies to sequences of "
                "exactly its shape")
