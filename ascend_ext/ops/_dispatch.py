"""Implementation registry: picks one implementation per op and device.

Every public op has several implementations ("reference", "triton", "native",
"npu"). Each registers itself here with the device types it serves and a check of
whether it can run (its package is installed, its extension is built). At call
time :func:`resolve` returns the first available implementation in the device's
preference order, unless an override names one:

* ``ASCEND_EXT_IMPL="attention=reference,mla=triton"``: per op family
  (``attention``, ``mla``, ``moe``, ``comm``) or per op (``paged_attention=native``);
  an op entry wins over its family's.
* :func:`use_impl` does the same programmatically (tests, benchmarks).

An override that names an implementation which cannot run on the device raises
``RuntimeError`` instead of silently falling back.

Implementations are registered by dotted path and imported on first use, so an
implementation whose dependencies are missing never breaks ``import ascend_ext``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# op name -> family name used by ASCEND_EXT_IMPL
OP_FAMILIES: dict[str, str] = {
    "flash_attn_varlen": "attention",
    "paged_attention": "attention",
    "reshape_and_cache": "attention",
    "merge_attn_states": "attention",
    "mla_decode": "mla",
    "concat_and_cache_mla": "mla",
    "moe_route": "moe",
    "moe_experts": "moe",
    "ep_dispatch": "moe",
    "ep_combine": "moe",
    "tiled_linear_allreduce": "comm",
}

# device type -> implementation names, most preferred first
PREFERENCE: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "reference"),
    "npu": ("npu", "triton", "reference"),
    "cpu": ("native", "reference"),
}
DEFAULT_PREFERENCE = ("reference",)


@dataclass
class Impl:
    op: str
    name: str
    target: str  # "package.module:function"
    devices: frozenset[str]
    available: Callable[[str], str | None] = field(default=lambda device: None)
    """Returns None when the implementation can run on the device type, else the reason."""
    _fn: Callable | None = None

    def load(self) -> Callable:
        if self._fn is None:
            module, _, attr = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn

    def unavailable_reason(self, device: str) -> str | None:
        if device not in self.devices:
            return f"{self.name} does not run on {device} (it runs on {', '.join(sorted(self.devices))})"
        return self.available(device)


_REGISTRY: dict[str, dict[str, Impl]] = {}
_local = threading.local()


def register(op: str, name: str, target: str, *, devices: tuple[str, ...],
             available: Callable[[str], str | None] | None = None) -> None:
    """Register ``target`` ("module:function") as implementation ``name`` of ``op``."""
    if op not in OP_FAMILIES:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OP_FAMILIES)}")
    impl = Impl(op, name, target, frozenset(devices))
    if available is not None:
        impl.available = available
    _REGISTRY.setdefault(op, {})[name] = impl


def implementations(op: str) -> dict[str, Impl]:
    return dict(_REGISTRY.get(op, {}))


@functools.lru_cache(maxsize=64)
def _parse_overrides_cached(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(_parse_overrides(text).items())


def _parse_overrides(text: str) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(
                f"ASCEND_EXT_IMPL entries must look like 'attention=reference' or "
                f"'paged_attention=triton', got {item!r}"
            )
        if key not in OP_FAMILIES and key not in set(OP_FAMILIES.values()):
            raise ValueError(
                f"ASCEND_EXT_IMPL names unknown op or family {key!r}; families: "
                f"{sorted(set(OP_FAMILIES.values()))}, ops: {sorted(OP_FAMILIES)}"
            )
        overrides[key] = value
    return overrides


def _override_for(op: str) -> str | None:
    for scope in reversed(getattr(_local, "stack", [])):
        for key in (op, OP_FAMILIES[op]):
            if key in scope:
                return scope[key]
    env = dict(_parse_overrides_cached(os.environ.get("ASCEND_EXT_IMPL", "")))
    return env.get(op) or env.get(OP_FAMILIES[op])


@contextlib.contextmanager
def use_impl(**overrides: str) -> Iterator[None]:
    """Force implementations inside the block, e.g. ``use_impl(attention="triton")``."""
    scope = _parse_overrides(",".join(f"{k}={v}" for k, v in overrides.items()))
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(scope)
    try:
        yield
    finally:
        stack.pop()


def select(op: str, device_type: str) -> Impl:
    """The implementation of ``op`` that runs for tensors on ``device_type``."""
    impls = _REGISTRY.get(op, {})
    forced = _override_for(op)
    if forced is not None:
        impl = impls.get(forced)
        if impl is None:
            raise RuntimeError(
                f"ASCEND_EXT_IMPL/use_impl asks for implementation {forced!r} of {op}, "
                f"which does not exist; registered: {sorted(impls)}"
            )
        reason = impl.unavailable_reason(device_type)
        if reason is not None:
            raise RuntimeError(f"implementation {forced!r} of {op} was requested but cannot run: {reason}")
        return impl
    for name in PREFERENCE.get(device_type, DEFAULT_PREFERENCE) + ("reference",):
        impl = impls.get(name)
        if impl is not None and impl.unavailable_reason(device_type) is None:
            return impl
    raise RuntimeError(f"no implementation of {op} can run on device type {device_type!r}")


def resolve(op: str, device_type: str) -> Callable:
    return select(op, device_type).load()


def selected_impl(op: str, device_type: str) -> str:
    """Name of the implementation of ``op`` that runs on ``device_type`` right now."""
    return select(op, device_type).name


def describe(device_type: str) -> dict[str, str]:
    """op -> chosen implementation name (or the error) for ``device_type``; used by the CLI."""
    table = {}
    for op in OP_FAMILIES:
        if op not in _REGISTRY:
            continue
        try:
            table[op] = select(op, device_type).name
        except (RuntimeError, ValueError) as exc:
            table[op] = f"error: {exc}"
    return table
