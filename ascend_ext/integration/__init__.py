"""vLLM integration: platforms and backends that adapt vLLM's metadata and call
:mod:`ascend_ext.ops`. Holds no math."""

ATTENTION_BACKEND_NAME = "ASCEND_EXT"
ATTENTION_BACKEND_PATH = "ascend_ext.integration.attention_backend.AscendExtAttentionBackend"
MLA_BACKEND_NAME = "ASCEND_EXT_MLA"
MLA_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLABackend"
MLA_PREFILL_BACKEND_PATH = "ascend_ext.integration.mla_backend.AscendExtMLAPrefillBackend"


def register_backends() -> None:
    """Register our backend names with vLLM's registry (idempotent)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    for name, path in ((ATTENTION_BACKEND_NAME, ATTENTION_BACKEND_PATH), (MLA_BACKEND_NAME, MLA_BACKEND_PATH)):
        if name not in AttentionBackendEnum.__members__:
            register_backend(name, path)
