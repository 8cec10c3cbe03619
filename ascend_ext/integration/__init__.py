"""vLLM integration: platforms and backends that adapt vLLM's metadata and call
:mod:`ascend_ext.ops`. Holds no math. What depends on the vLLM release is in :mod:`.compat`."""

ATTENTION_BACKEND_NAME = "ASCEND_EXT"
ATTENTION_BACKEND_PATH = "ascend_ext.integration.attention_backend.AscendExtAttentionBackend"
MLA_BACKEND_NAME = "ASCEND_EXT_MLA"
MLA_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLABackend"
MLA_PREFILL_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLAPrefillBackend"

FLOAT_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32")
QUANT_KV_CACHE_DTYPES = {"fp8": "fp8", "fp8_e4m3": "fp8", "int8": "int8"}
"""vLLM kv_cache_dtype -> ascend_ext.ops quantised-cache scheme ("int8" is vllm-ascend's C8 cache;
vLLM accepts that name only with vllm-ascend's patch of CacheDType)."""


def attention_backend_name() -> str:
    """The name our attention backend has in this vLLM (CUSTOM on vLLM 0.30)."""
    from .compat import attention_backend_name as name_for

    return name_for(ATTENTION_BACKEND_NAME)


def register_backends() -> None:
    """Register our backend names with vLLM's registry (idempotent)."""
    from .compat import register_backend

    register_backend(ATTENTION_BACKEND_NAME, ATTENTION_BACKEND_PATH, looked_up=True)
    register_backend(MLA_BACKEND_NAME, MLA_BACKEND_PATH, looked_up=False)
