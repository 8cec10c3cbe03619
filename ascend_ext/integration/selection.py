"""Which vLLM attention layers our backends serve (the rest stay with vLLM's)."""

from __future__ import annotations

import logging

from . import ATTENTION_BACKEND_PATH, MLA_BACKEND_NAME, MLA_BACKEND_PATH, attention_backend_name, register_backends

logger = logging.getLogger("ascend_ext")

_SUPPORTED_CACHE_DTYPES = (None, "auto", "float16", "bfloat16", "float32")


def unsupported_reason(selected_backend, config) -> str | None:
    """Why our backend must not serve this layer, or None when it can."""
    ours = MLA_BACKEND_NAME if config.use_mla else attention_backend_name()
    if selected_backend is not None and getattr(selected_backend, "name", None) != ours:
        return f"the user selected backend {selected_backend.name}"
    if config.use_mla and config.kv_cache_dtype not in (None, "auto"):
        return f"MLA kv_cache_dtype {config.kv_cache_dtype} is not supported by ascend_ext MLA"
    checks = (
        (config.attn_type != "decoder", f"attention type {config.attn_type}"),
        (config.has_sink, "attention sinks"),
        (config.use_sparse, "sparse attention"),
        (config.use_mm_prefix, "multimodal prefix-LM masks"),
        (config.kv_cache_dtype not in _SUPPORTED_CACHE_DTYPES, f"kv_cache_dtype {config.kv_cache_dtype}"),
        (config.use_pcp or config.use_dcp, "context parallelism"),
        (config.use_rswa, "R-SWA"),
    )
    for failed, what in checks:
        if failed:
            return f"{what} is not supported by ascend_ext attention"
    return None


def attention_backend_path(selected_backend, config) -> str | None:
    """Our backend's class path for this layer, or None to defer to vLLM's choice."""
    reason = unsupported_reason(selected_backend, config)
    if reason is not None:
        logger.info("ascend_ext: deferring attention to vLLM (%s)", reason)
        return None
    register_backends()
    return MLA_BACKEND_PATH if config.use_mla else ATTENTION_BACKEND_PATH
