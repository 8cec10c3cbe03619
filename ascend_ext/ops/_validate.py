"""Input validation shared by every public op.

Two kinds of checks:

* metadata checks (type, rank, shape, dtype, device) are free and always run;
* value checks (cu_seqlens monotonic, block ids in range, ...) read tensor
  contents, which costs a device->host sync on accelerators. They run by default
  and are skipped inside :func:`trusted_inputs`, which the vLLM integration uses
  because vLLM builds that metadata itself.

Every failure raises ``TypeError`` (wrong type/dtype) or ``ValueError`` (wrong
shape/value/device) whose message names the argument and what was expected.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_state = threading.local()


def value_checks_enabled() -> bool:
    """False inside :func:`trusted_inputs` and while torch.compile traces (no host syncs)."""
    if torch.compiler.is_compiling():
        return False
    return getattr(_state, "trusted_depth", 0) == 0


class trusted_inputs:
    """Skip value checks (those that would sync with the device) inside the block
    (``with ops.trusted_inputs(): ...``; nestable, per thread)."""

    __slots__ = ()

    def __enter__(self) -> None:
        _state.trusted_depth = getattr(_state, "trusted_depth", 0) + 1

    def __exit__(self, *exc) -> None:
        _state.trusted_depth -= 1


def tensor(name: str, x, *, ndim: int | None = None, dtypes: Sequence[torch.dtype] | None = None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    return x


def same_dtype(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, x in others.items():
        if x is not None and x.dtype != ref.dtype:
            raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}")


def same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, x in others.items():
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x is not None and x.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {x.device}")


def dim_equals(name: str, x: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name}.shape[{dim}] must equal {what} ({expected}), got shape {tuple(x.shape)}"
        )


def positive_int(name: str, value, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def gqa_heads(q_name: str, num_q_heads: int, kv_name: str, num_kv_heads: int) -> int:
    if num_kv_heads <= 0 or num_q_heads % num_kv_heads != 0:
        raise ValueError(
            f"the head count of {q_name} ({num_q_heads}) must be a multiple of the head "
            f"count of {kv_name} ({num_kv_heads}) (grouped-query attention)"
        )
    return num_q_heads // num_kv_heads


def softmax_scale(value, head_dim: int) -> float:
    if value is None:
        return head_dim ** -0.5
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)):
        raise TypeError(f"softmax_scale must be a Python float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"softmax_scale must be > 0, got {value}")
    return float(value)


def window(window_size, causal: bool) -> tuple[int, int]:
    """Normalise (left, right) window; causal forces right = 0 (flash-attn semantics)."""
    if window_size == (-1, -1) and causal is True:   # the common case, cheaply
        return -1, 0
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    try:
        left, right = (int(v) for v in window_size)
    except (TypeError, ValueError):
        raise TypeError(f"window_size must be a pair of ints (left, right), got {window_size!r}") from None
    for side, v in (("left", left), ("right", right)):
        if v < -1:
            raise ValueError(f"window_size {side} must be -1 (unbounded) or >= 0, got {v}")
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def sinks(value, q: torch.Tensor) -> torch.Tensor | None:
    """Attention-sink logits: None, or float32 [Hq] on q's device (value check: none NaN or +inf)."""
    if value is None:
        return None
    hq = q.shape[1]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sinks must be a float32 tensor [Hq] = [{hq}] (or None), got {type(value).__name__}")
    if value.dtype != torch.float32:
        raise TypeError(f"sinks must be float32 [Hq] = [{hq}], got {str(value.dtype).replace('torch.', '')}")
    if tuple(value.shape) != (hq,):
        raise ValueError(f"sinks must have shape [Hq] = [{hq}] (one logit per query head), got {tuple(value.shape)}")
    if value.device != q.device:
        raise ValueError(f"sinks must be on the device of q ({q.device}), got {value.device}")
    if value_checks_enabled() and bool((torch.isnan(value) | (value == float("inf"))).any()):
        raise ValueError(f"sinks must be finite or -inf (= no sink), got {value.tolist()[:8]}")
    return value


def cu_seqlens(name: str, cu: torch.Tensor, total: int, batch: int | None = None) -> int:
    """Check an int32 [B+1] offsets tensor; returns B."""
    tensor(name, cu, ndim=1, dtypes=(torch.int32,))
    if cu.shape[0] < 1:
        raise ValueError(f"{name} must have at least one element [B+1], got shape {tuple(cu.shape)}")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name} must have shape [B+1] = [{batch + 1}], got {tuple(cu.shape)}")
    if value_checks_enabled():
        host = cu.tolist()
        if host[0] != 0:
            raise ValueError(f"{name}[0] must be 0, got {host[0]}")
        if any(b < a for a, b in zip(host, host[1:])):
            raise ValueError(f"{name} must be non-decreasing, got {host}")
        if host[-1] != total:
            raise ValueError(f"{name}[-1] must equal the token count ({total}), got {host[-1]}")
    return cu.shape[0] - 1


def max_seqlen(name: str, value, cu: torch.Tensor, cu_name: str) -> int:
    positive_int(name, value, allow_zero=True)
    if value_checks_enabled() and cu.shape[0] > 1:
        actual = int((cu[1:] - cu[:-1]).max())
        if actual > value:
            raise ValueError(f"{name} ({value}) is smaller than the longest sequence in {cu_name} ({actual})")
    return value


def output(name: str, out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    tensor(name, out)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != like.dtype or out.device != like.device:
        raise TypeError(f"{name} must be {like.dtype} on {like.device}, got {out.dtype} on {out.device}")
    return out


def paged_values(block_table: torch.Tensor, seq_lens: torch.Tensor, num_blocks: int, block_size: int, *,
                 max_seqlen_k: int | None = None) -> None:
    """Value checks of paged-cache metadata (syncs with the device). A sequence may have more
    queries than keys (bottom-right alignment: causal rows before the first key see none)."""
    lens = seq_lens.cpu()
    if bool((lens < 0).any()):
        raise ValueError(f"seq_lens must be >= 0, got {lens.tolist()}")
    if max_seqlen_k is not None and lens.numel() and int(lens.max()) > max_seqlen_k:
        raise ValueError(f"max_seqlen_k ({max_seqlen_k}) is smaller than max(seq_lens) ({int(lens.max())})")
    needed = (lens + block_size - 1) // block_size
    if needed.numel() and int(needed.max()) > block_table.shape[1]:
        raise ValueError(f"seq_lens needs up to {int(needed.max())} blocks but block_table has "
                         f"{block_table.shape[1]} columns")
    table = block_table.cpu()
    used = torch.arange(table.shape[1])[None, :] < needed[:, None]
    bad = used & ((table < 0) | (table >= num_blocks))
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"block_table[{b}, {j}] = {int(table[b, j])} is out of range [0, {num_blocks})")


def slots(slot_mapping: torch.Tensor, tokens: int, capacity: int) -> None:
    """slot_mapping [N] (N <= tokens) holds slots < capacity (negative = skip)."""
    tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32, torch.int64))
    if slot_mapping.shape[0] > tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries but only {tokens} tokens are given")
    if value_checks_enabled() and slot_mapping.numel():
        top = int(slot_mapping.max())
        if top >= capacity:
            raise ValueError(f"slot_mapping holds slot {top}, past the cache capacity "
                             f"num_blocks*block_size = {capacity}")
