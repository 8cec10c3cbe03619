"""vLLM integration: platforms and backends that adapt vLLM's metadata and call
:mod:`ascend_ext.ops`. Holds no math. What depends on the vLLM release is in :mod:`.compat`."""

ATTENTION_BACKEND_NAME = "ASCEND_EXT"
ATTENTION_BACKEND_PATH = "ascend_ext.integration.attention_backend.AscendExtAttentionBackend"
MLA_BACKEND_NAME = "ASCEND_EXT_MLA"
MLA_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLABackend"
MLA_PREFILL_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLAPrefillBackend"


def attention_backend_name() -> str:
    """The name our attention backend has in this vLLM (CUSTOM on vLLM 0.30)."""
    from .compat import attention_backend_name as name_for

    return name_for(ATTENTION_BACKEND_NAME)


def register_backends() -> None:
    """Register our backend names with vLLM's registry (idempotent)."""
    from .compat import register_backend

    register_backend(ATTENTION_BACKEND_NAME, ATTENTION_BACKEND_PATH, looked_up=True)
    register_backend(MLA_BACKEND_NAME, MLA_BACKEND_PATH, looked_up=False)
