"""Builds the optional native CPU kernels (csrc/) as ``ascend_ext._native``.

The extension is compiled against the torch found in the build environment, so
install with ``pip install --no-build-isolation -e .`` after torch (the Makefile
does). Without torch or a C++ compiler the package installs without it, says so,
and every op falls back to its reference implementation on CPU.

Build flags: ``-O3 -fopenmp`` plus ``-march=native`` (tuned for the CPU that
builds); set ``ASCEND_EXT_NATIVE_ARCH=portable`` for a baseline x86-64-v2 /
armv8-a build that runs on any machine of the architecture, or
``ASCEND_EXT_NATIVE=0`` to skip the extension.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import setup

NATIVE_SOURCES = ["csrc/attention.cpp", "csrc/cache.cpp", "csrc/mla_decode.cpp", "csrc/module.cpp"]


def _say(message: str) -> None:
    print(f"ascend_ext: {message}", file=sys.stderr)


def _arch_flags() -> list[str]:
    if os.environ.get("ASCEND_EXT_NATIVE_ARCH", "native") == "portable":
        return ["-march=armv8-a"] if platform.machine() in ("aarch64", "arm64") else ["-march=x86-64-v2"]
    return ["-march=native"]


def _native_extension():
    if os.environ.get("ASCEND_EXT_NATIVE", "1") == "0":
        _say("ASCEND_EXT_NATIVE=0: native CPU kernels not built (reference fallback)")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _say("torch is not importable in the build environment: native CPU kernels not built, "
             "ops use their reference implementation on CPU. Install torch first and use "
             "`pip install --no-build-isolation` to build them.")
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """A failed native build (no compiler, old toolchain) must not fail the install."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any build failure means: no extension
                _say(f"building the native CPU kernels failed ({error}); ops use their reference "
                     "implementation on CPU")

    extension = CppExtension(
        "ascend_ext._native",
        NATIVE_SOURCES,
        extra_compile_args=["-O3", "-fopenmp", "-Wno-psabi", *_arch_flags()],
        extra_link_args=["-fopenmp"],
    )
    return [extension], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
