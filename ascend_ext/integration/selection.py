"""Which vLLM attention layers our backends serve (the rest stay with vLLM's)."""

from __future__ import annotations

import logging

from . import (ATTENTION_BACKEND_PATH, FLOAT_KV_CACHE_DTYPES, MLA_BACKEND_NAME, MLA_BACKEND_PATH,
               QUANT_KV_CACHE_DTYPES, attention_backend_name, register_backends)

logger = logging.getLogger("ascend_ext")

_SUPPORTED_CACHE_DTYPES = (None, *FLOAT_KV_CACHE_DTYPES, *QUANT_KV_CACHE_DTYPES)


def unsupported_reason(selected_backend, config) -> str | None:
    """Why our backend must not serve this layer, or None when it can."""
    ours = MLA_BACKEND_NAME if config.use_mla else attention_backend_name()
    if selected_backend is not None and getattr(selected_backend, "name", None) != ours:
        return f"the user selected backend {selected_backend.name}"
    if config.use_mla and config.kv_cache_dtype not in (None, "auto"):
        return f"MLA kv_cache_dtype {config.kv_cache_dtype} is not supported by ascend_ext MLA"
    checks = (
        (config.attn_type != "decoder", f"attention type {config.attn_type}"),
        (config.use_sparse, "sparse attention"),
        (config.use_mm_prefix, "multimodal prefix-LM masks"),
        (config.kv_cache_dtype not in _SUPPORTED_CACHE_DTYPES,
         f"kv_cache_dtype {config.kv_cache_dtype} (supported: {', '.join(_SUPPORTED_CACHE_DTYPES[1:])})"),
        (config.use_pcp or config.use_dcp, "context parallelism"),
        (config.use_rswa, "R-SWA"),
    )
    for failed, what in checks:
        if failed:
            return f"{what} is not supported by ascend_ext attention"
    return None


def require_paged_features(kv_cache_dtype: str | None, has_sink: bool, device_type: str) -> None:
    """Raise a clear NotImplementedError when the paged_attention implementation bound on this
    device cannot read the quantised cache ``kv_cache_dtype`` asks for (e.g. triton-ascend's
    interpreter with fp8) or take attention sinks, naming the implementations that can - at
    backend selection, before any cache is allocated."""
    kind = QUANT_KV_CACHE_DTYPES.get(kv_cache_dtype)
    if kind is None and not has_sink:
        return
    from ..ops import _contract, _dispatch

    _contract.require(_dispatch.bound("paged_attention", device_type), device_type, kv_quant=kind,
                      sinks=has_sink)


def attention_backend_path(selected_backend, config) -> str | None:
    """Our backend's class path for this layer, or None to defer to vLLM's choice."""
    reason = unsupported_reason(selected_backend, config)
    if reason is not None:
        logger.info("ascend_ext: deferring attention to vLLM (%s)", reason)
        return None
    if not config.use_mla:
        from vllm.platforms import current_platform

        require_paged_features(config.kv_cache_dtype, bool(config.has_sink), current_platform.device_type)
    register_backends()
    return MLA_BACKEND_PATH if config.use_mla else ATTENTION_BACKEND_PATH
