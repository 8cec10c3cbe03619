"""ascend_ext: FastAttention, MLA and expert-parallel kernels for vLLM on Ascend NPUs,
NVIDIA GPUs and CPUs.

vLLM entry points (see pyproject.toml):

* ``vllm.platform_plugins``: :func:`register` returns the platform class path for
  the detected hardware, or None (vLLM's own platform then serves).
* ``vllm.general_plugins``: :func:`register_general` registers our backend names.
"""

from __future__ import annotations

import logging
import os

__version__ = "0.1.0"

from . import backends  # noqa: E402,F401 - registers every device backend's implementations

logger = logging.getLogger("ascend_ext")

CPU_PLATFORM = "ascend_ext.backends.cpu.platform.AscendExtCpuPlatform"
CUDA_PLATFORM = "ascend_ext.backends.cuda.platform.AscendExtCudaPlatform"
NPU_PLATFORM = "ascend_ext.backends.npu.platform.AscendExtNPUPlatform"


def disabled() -> bool:
    return os.environ.get("ASCEND_EXT_DISABLE", "0").strip().lower() in ("1", "true", "yes", "on")


def vllm_ascend_platform_active() -> bool:
    """Whether vllm-ascend's platform plugin is installed and allowed by VLLM_PLUGINS."""
    from importlib.metadata import entry_points

    allowed = os.environ.get("VLLM_PLUGINS")
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",")}
    for ep in entry_points(group="vllm.platform_plugins"):
        if ep.value.split(":")[0].split(".")[0] == "vllm_ascend":
            if allowed_names is None or ep.name in allowed_names:
                return True
    return False


def register() -> str | None:
    """vLLM platform plugin: our platform class path for this machine, or None.

    Cheap and idempotent. None when ``ASCEND_EXT_DISABLE=1``; when the installed vLLM is
    outside the supported range (:data:`ascend_ext.integration.compat.SUPPORTED_VLLM`, one
    warning); when vllm-ascend's own
    platform plugin is active (vLLM refuses two out-of-tree platforms, so we defer to
    it rather than make vLLM fail; exclude it with ``VLLM_PLUGINS`` to use ours); on an
    NPU without vllm-ascend installed (our NPU platform builds on its NPUPlatform); and
    when the installed vLLM cannot drive the detected hardware.
    """
    if disabled():
        return None
    import importlib.util

    from . import hardware
    from .integration.compat import vllm_supported

    if not vllm_supported():   # one warning; vLLM keeps its own platform
        return None

    if vllm_ascend_platform_active():
        logger.warning("ascend_ext: vllm-ascend's platform plugin is active, deferring to it (set "
                       "VLLM_PLUGINS=ascend_ext,ascend_ext_backends,<vllm-ascend general plugins> to use ours)")
        return None
    device = hardware.detect()
    if device == "npu":
        if importlib.util.find_spec("vllm_ascend") is None:
            logger.warning("ascend_ext: NPU found but vllm-ascend is not installed; the NPU platform needs it")
            return None
        return NPU_PLATFORM
    cpu_build = hardware.vllm_is_cpu_build()
    if device == "cuda" and not cpu_build:
        return CUDA_PLATFORM
    if cpu_build:
        return CPU_PLATFORM
    return None


def register_general() -> None:
    """vLLM general plugin (every vLLM process): backend names, and - when one of our
    platforms is active - the expert-parallel MoE method and the tiling-AllReduce
    row-parallel linear."""
    if disabled():
        return
    from .integration.compat import vllm_supported

    if not vllm_supported():
        return
    try:
        from vllm.platforms import current_platform

        from .integration import register_backends
        register_backends()
        if type(current_platform).__module__.startswith("ascend_ext."):
            from .integration.linear import register_linear
            from .integration.moe import register_moe_method
            register_moe_method()
            register_linear()
    except Exception:  # never make vLLM fail to start
        logger.exception("ascend_ext: backend registration failed")
