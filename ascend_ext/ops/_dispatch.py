"""Implementation registry: every op binds one implementation per device type, once.

Each public op has several implementations ("reference", "native", "triton", "npu").
Backends (``ascend_ext/backends/<device>/``) register theirs with :func:`register`,
declaring the device types they serve, a check of whether they can run (package
installed, extension built) and what they support (:class:`~ascend_ext.ops._contract.Supports`).

The first call of an op on a device type *binds* it: :func:`select` walks the device's
preference order (or the override) once, loads the implementation and caches it; later
calls are a dict lookup (:func:`bound`). Overrides rebind:

* ``ASCEND_EXT_IMPL="attention=reference,mla=triton"``: per op family (``attention``,
  ``mla``, ``moe``, ``comm``) or per op (``paged_attention=native``); an op entry wins
  over its family's. Read when an op binds; call :func:`rebind` after changing it.
* :func:`use_impl` does the same programmatically (tests, benchmarks) for a block.

An override that names an implementation which cannot run on the device raises
``RuntimeError`` instead of silently falling back. Implementations are registered by
dotted path (or a loader) and imported when bound, so one whose dependencies are
missing never breaks ``import ascend_ext``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ._contract import OP_FAMILIES, Supports

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
    target: str | Callable[[], Callable]
    """"package.module:function", or a loader returning the function (e.g. a kernel
    bound to its backend's tile configs)."""
    devices: frozenset[str]
    available: Callable[[str], str | None] = field(default=lambda device: None)
    """Returns None when the implementation can run on the device type, else the reason."""
    supports: Supports = field(default_factory=Supports)
    fn: Callable | None = None

    def load(self) -> Callable:
        if self.fn is None:
            if callable(self.target):
                self.fn = self.target()
            else:
                module, _, attr = self.target.partition(":")
                self.fn = getattr(importlib.import_module(module), attr)
        return self.fn

    def unavailable_reason(self, device: str) -> str | None:
        if device not in self.devices:
            return f"{self.name} does not run on {device} (it runs on {', '.join(sorted(self.devices))})"
        return self.available(device)


_REGISTRY: dict[str, list[Impl]] = {}
_BOUND: dict[tuple[str, str], Impl] = {}
_scopes: list[dict[str, str]] = []
SELECT_CALLS = 0
"""How often :func:`select` walked the registry (tests assert it does not grow per call)."""


def register(op: str, name: str, target: str | Callable[[], Callable], *, devices: tuple[str, ...],
             available: Callable[[str], str | None] | None = None, supports: Supports | None = None) -> None:
    """Register ``target`` as implementation ``name`` of ``op`` on ``devices``.

    The same name may be registered again for other devices (e.g. the Triton kernels
    bound to each backend's tile configs); a registration for a device replaces an
    earlier one of that name and device."""
    if op not in OP_FAMILIES:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OP_FAMILIES)}")
    impl = Impl(op, name, target, frozenset(devices))
    if available is not None:
        impl.available = available
    if supports is not None:
        impl.supports = supports
    entries = _REGISTRY.setdefault(op, [])
    entries[:] = [e for e in entries if not (e.name == name and e.devices <= impl.devices)]
    entries.append(impl)
    rebind()


def implementations(op: str, device: str | None = None) -> dict[str, Impl]:
    """name -> Impl of ``op`` (for ``device``, or the last registered of each name)."""
    table: dict[str, Impl] = {}
    for impl in _REGISTRY.get(op, []):
        if device is None or device in impl.devices:
            table[impl.name] = impl
    return table


def rebind() -> None:
    """Forget every binding (the next call of each op selects again)."""
    _BOUND.clear()


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
    for scope in reversed(_scopes):
        for key in (op, OP_FAMILIES[op]):
            if key in scope:
                return scope[key]
    env = _parse_overrides(os.environ.get("ASCEND_EXT_IMPL", ""))
    return env.get(op) or env.get(OP_FAMILIES[op])


@contextlib.contextmanager
def use_impl(**overrides: str) -> Iterator[None]:
    """Force implementations inside the block, e.g. ``use_impl(attention="triton")``.

    Process-wide (not per thread): the bindings are rebuilt on entry and exit."""
    scope = _parse_overrides(",".join(f"{k}={v}" for k, v in overrides.items()))
    _scopes.append(scope)
    rebind()
    try:
        yield
    finally:
        _scopes.remove(scope)
        rebind()


def select(op: str, device_type: str) -> Impl:
    """Walk overrides and preferences: the implementation of ``op`` for ``device_type``."""
    global SELECT_CALLS
    SELECT_CALLS += 1
    impls = implementations(op, device_type)
    forced = _override_for(op)
    if forced is not None:
        impl = impls.get(forced)
        if impl is None:
            known = sorted(implementations(op))
            raise RuntimeError(
                f"ASCEND_EXT_IMPL/use_impl asks for implementation {forced!r} of {op}, which "
                f"{'does not run on ' + device_type if forced in known else 'does not exist'}; "
                f"registered: {known}"
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


def bound(op: str, device_type: str) -> Impl:
    """The implementation bound to (op, device type), selecting and loading it on first use."""
    impl = _BOUND.get((op, device_type))
    if impl is None:
        impl = select(op, device_type)
        impl.load()
        _BOUND[(op, device_type)] = impl
    return impl


def selected_impl(op: str, device_type: str) -> str:
    """Name of the implementation of ``op`` that runs on ``device_type`` right now."""
    return bound(op, device_type).name


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
