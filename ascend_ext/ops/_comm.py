"""Collectives with a deadline: a peer that died or never called makes the others
raise :class:`CollectiveTimeoutError` instead of hanging."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


class CollectiveTimeoutError(TimeoutError):
    """A collective did not complete: a peer rank died, hung, or never called it."""


def default_timeout_s() -> float:
    return float(os.environ.get("ASCEND_EXT_COMM_TIMEOUT_S", "300"))


def world_of(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_process_group or pass a group")
    return dist.get_world_size(group), dist.get_rank(group)


def _wait(work, what: str, group, timeout_s: float) -> None:
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:   # gloo/NCCL/HCCL report peer loss and deadlines as RuntimeError
        world, rank = world_of(group)
        raise CollectiveTimeoutError(
            f"{what}: the collective on rank {rank} of {world} did not complete within {timeout_s:g} s "
            f"(a peer rank may have died or not called it): {exc}") from exc


def all_to_all(output: torch.Tensor, send: torch.Tensor, group, what: str, timeout_s: float,
               output_splits: list[int] | None = None, input_splits: list[int] | None = None) -> None:
    """all_to_all_single along dim 0 (equal splits when the split lists are None).
    A group of one copies locally (no collective)."""
    if dist.get_world_size(group) == 1:
        output.copy_(send)
        return
    work = dist.all_to_all_single(output, send, output_split_sizes=output_splits,
                                  input_split_sizes=input_splits, group=group, async_op=True)
    _wait(work, what, group, timeout_s)


def all_gather(tensor: torch.Tensor, group, what: str, timeout_s: float) -> torch.Tensor:
    """[world, *tensor.shape] gathered from every rank."""
    world, _ = world_of(group)
    if world == 1:
        return tensor[None].clone()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    work = dist.all_gather(parts, tensor.contiguous(), group=group, async_op=True)
    _wait(work, what, group, timeout_s)
    return torch.stack(parts)


def all_reduce_async(tensor: torch.Tensor, group):
    """Start a SUM all-reduce in place; returns the work handle for :func:`wait`."""
    return dist.all_reduce(tensor, group=group, async_op=True)


def wait(work, what: str, group, timeout_s: float) -> None:
    _wait(work, what, group, timeout_s)


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


# ------------------------------------------------------------------ groups by name
# Custom ops take strings, not ProcessGroup objects: a group travels as its c10d name.
_SMALL_ALL_REDUCE: dict[str, object] = {}
_OBSERVERS: list = []


def group_name(group) -> str:
    """The c10d name of ``group`` ("" for the default world or no distributed at all)."""
    if group is None:
        return ""
    return group.group_name


def group_by_name(name: str):
    """The ProcessGroup called ``name``; None for "" (the default group)."""
    if not name:
        return None
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(name)


def register_group(name: str, small_all_reduce) -> None:
    """Give the group ``name`` a one-shot all-reduce ``fn(tensor) -> tensor`` for batches too
    small to pipeline (the vLLM integration registers vLLM's communicator here)."""
    _SMALL_ALL_REDUCE[name] = small_all_reduce


def small_all_reduce(name: str):
    return _SMALL_ALL_REDUCE.get(name)


def add_observer(fn) -> None:
    """``fn(event)`` is called when a communication-overlapped op runs its pipelined path
    (the vLLM integration's trace uses it; the op layer knows nothing of vLLM)."""
    if fn not in _OBSERVERS:
        _OBSERVERS.append(fn)


def notify(event: str) -> None:
    for fn in _OBSERVERS:
        fn(event)
