"""NPU platform: vllm-ascend's NPUPlatform (worker, model runner, HCCL communicator, graph
mode) with ascend_ext's attention and MLA backends; MoE and linear hooks come from the
general plugin as on the other platforms. Built on vllm-ascend 0.30.0rc2 (vLLM 0.30) and
checked against its real source in CI (tests/npu/test_vllm_ascend_real.py); not run on
NPU hardware.

vllm-ascend's ``pre_register_and_update`` replaces vLLM's MLA prefill selector with one
returning its own no-op backend; our ``get_attn_backend_cls`` (common mixin) routes MLA
prefill back to ours whenever our MLA backend serves. The KV-cache block size must suit
both paged torch_npu ops (:func:`check_cache_config`).
"""

from vllm_ascend.platform import NPUPlatform

from ...integration.platform_mixin import AscendExtPlatformMixin
from .constraints import check_block_size


def check_cache_config(vllm_config) -> None:
    """Raise ValueError when the configured KV-cache block size breaks a documented limit
    of npu_fused_infer_attention_score (128-512 step 128; 16 or 128 for MLA)."""
    model = vllm_config.model_config
    check_block_size(vllm_config.cache_config.block_size, use_mla=bool(model is not None and model.use_mla))


class AscendExtNPUPlatform(AscendExtPlatformMixin, NPUPlatform):
    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        super().check_and_update_config(vllm_config)
        check_cache_config(vllm_config)
