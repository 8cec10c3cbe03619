"""The native kernels built with portable flags (no AVX/AVX-512: the generic vector code
that runs on ARM hosts such as Kunpeng and on older x86) pass the same parity checks.

The installed extension is built with -march=native; this test compiles the same
sources a second time with the portable baseline under another torch.ops namespace,
points the `native` implementation at it and reruns a slice of the parity matrix.
"""

import platform
import shutil

import pytest
import torch

from ascend_ext.backends.cpu import native

from . import test_attention_edges as edges
from . import test_attention_parity as parity
from . import test_attention_sinks as sinks
from . import test_cooperative as cooperative
from . import test_kv_quant as kv_quant
from . import test_mla as mla
from . import test_native_attention as native_tests

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
NAMESPACE = "ascend_ext_portable"

def _cannot_build() -> str | None:
    from torch.utils.cpp_extension import is_ninja_available

    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler to build the portable variant"
    if not is_ninja_available():
        return "ninja is missing (torch.utils.cpp_extension.load needs it)"
    return None


pytestmark = pytest.mark.skipif(_cannot_build() is not None, reason=str(_cannot_build()))


@pytest.fixture(scope="module")
def portable_ops(tmp_path_factory):
    from torch.utils.cpp_extension import load

    arch = "-march=armv8-a" if platform.machine() in ("aarch64", "arm64") else "-march=x86-64-v2"
    sources = [str(ROOT / "csrc" / name) for name in ("attention.cpp", "cache.cpp", "mla_decode.cpp")]
    load(name=NAMESPACE, sources=sources,
         extra_cflags=["-O2", "-fopenmp", "-Wno-psabi", arch, f"-DASCEND_EXT_OPS_NAMESPACE={NAMESPACE}"],
         extra_ldflags=["-fopenmp"], build_directory=str(tmp_path_factory.mktemp("portable_build")),
         is_python_module=False, verbose=False)
    return NAMESPACE


@pytest.fixture
def use_portable(portable_ops, monkeypatch):
    if native.native_available("cpu") is not None:
        pytest.skip(str(native.native_available("cpu")))
    monkeypatch.setattr(native, "OPS_NAMESPACE", portable_ops)


def _every(cases, step):
    """Every step-th case of a parity matrix, each as one tuple argument."""
    return [pytest.param(c.values, id=c.id) for c in cases[::step]]


@pytest.mark.parametrize("case", _every(parity._varlen_cases(), 5))
def test_portable_flash_attn_varlen(use_portable, case, rng):
    parity.test_flash_attn_varlen("native", *case, rng)


@pytest.mark.parametrize("case", _every(parity._paged_cases(), 3))
def test_portable_paged_attention(use_portable, case, rng):
    parity.test_paged_attention("native", *case, rng)


@pytest.mark.parametrize("case", _every(sinks._paged_cases(), 4))
def test_portable_paged_sinks(use_portable, case, rng):
    sinks.test_paged_attention_sinks("native", *case, rng)


def test_portable_sinks_splits_and_more_queries_than_keys(use_portable, threads, rng):
    sinks.test_paged_sinks_long_context_splits("native", [(1500, 1)], threads, rng)
    case = edges._q_gt_k_cases()[4]
    edges.test_paged_more_queries_than_keys("native", *case.values, rng)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_portable_kv_splits_and_cooperative(use_portable, dtype, threads, rng):
    native_tests.test_paged_long_context_kv_splits(2, dtype, (-1, -1), threads, rng)
    cooperative.test_cooperative_equals_full_attention("native", "uneven", True, dtype, rng)


@pytest.mark.parametrize("case", _every(mla.CASES, 4))
def test_portable_mla_decode(use_portable, case, rng):
    mla.test_mla_decode_matches_float64("native", *case, rng)


def test_portable_mla_splits_and_odd_widths(use_portable, threads, rng):
    mla.test_mla_native_context_splits(2, torch.bfloat16, [1029], 4, threads, rng)
    mla.test_mla_native_odd_widths(torch.float16, True, rng)


def test_portable_mla_fp8_cache(use_portable, rng):
    mla.test_mla_decode_fp8_cache("native", 8, 4, 16, [4, 77, 0], torch.float16, rng)
    mla.test_mla_decode_fp8_cache("native", 16, 1, 64, [0, 1, 130, 64], torch.bfloat16, rng)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_portable_quantised_caches(use_portable, kind, rng):
    for q_dtype in (torch.float32, torch.bfloat16):
        kv_quant.test_native_cpu_dequantises_every_code_exactly(kind, q_dtype, rng)
    case = next(c for c in kv_quant._cases() if c.values[0] == kind and c.values[2] == (kind == "int8"))
    kv_quant.test_paged_attention_on_quantised_cache(*case.values, rng)
