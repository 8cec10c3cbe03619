"""vLLM integration: platforms and backends that adapt vLLM's metadata and call
:mod:`ascend_ext.ops`. Holds no math."""

ATTENTION_BACKEND_NAME = "ASCEND_EXT"
ATTENTION_BACKEND_PATH = "ascend_ext.integration.attention_backend.AscendExtAttentionBackend"


def register_backends() -> None:
    """Register our backend names with vLLM's registry (idempotent)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if ATTENTION_BACKEND_NAME not in AttentionBackendEnum.__members__:
        register_backend(ATTENTION_BACKEND_NAME, ATTENTION_BACKEND_PATH)
