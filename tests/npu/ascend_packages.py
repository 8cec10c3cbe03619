"""The real Ascend packages, fetched from the package index for tests (never installed).

torch-npu's wheel (op schemas, meta shape functions, op docs) and vllm-ascend's sdist
(plain Python) are downloaded through the index's simple API (PEP 691, the API pip
uses), checked against the index's sha256, and unpacked under a cache directory:
``$ASCEND_EXT_PKG_CACHE`` or ``~/.cache/ascend_ext/packages``. ``pip download`` is not
used for the sdist: it builds the sdist's metadata, which needs vllm-ascend's build
requirements (torch-npu, triton-ascend 3.2.2, which the index does not have).

Without network the tests that need a package skip with the reason; with
``ASCEND_EXT_REQUIRE_DOWNLOADS=1`` (set by CI) they fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

INDEX = os.environ.get("ASCEND_EXT_INDEX_URL", "https://pypi.org/simple").rstrip("/")
CACHE = Path(os.environ.get("ASCEND_EXT_PKG_CACHE", Path.home() / ".cache" / "ascend_ext" / "packages"))

TORCH_NPU = ("torch-npu", "2.10.0.post4")
VLLM_ASCEND = ("vllm-ascend", "0.30.0rc2")

# members of the torch-npu wheel the tests read
TORCH_NPU_MEMBERS = ("torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml",
                     "torch_npu/op_plugin/meta/_meta_registrations.py", "torch_npu/_op_plugin_docs.py")


class Unavailable(RuntimeError):
    pass


def _pick(files: list[dict], project: str, version: str) -> dict:
    stem = f"{project.replace('-', '_')}-{version}"
    wheels = [f for f in files if f["filename"].startswith(stem + "-") and f["filename"].endswith(".whl")]
    sdists = [f for f in files if f["filename"] == stem + ".tar.gz"]
    # any wheel will do (only its Python/YAML files are read): prefer this machine's kind
    wheels.sort(key=lambda f: ("x86_64" not in f["filename"], "cp311" not in f["filename"]))
    chosen = wheels[:1] or sdists[:1]
    if not chosen:
        raise Unavailable(f"{project}=={version} has no file on {INDEX}")
    return chosen[0]


def download(project: str, version: str) -> Path:
    """The package file (wheel, else sdist), downloaded once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(f"{INDEX}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
        entry = _pick(listing["files"], project, version)
        target = CACHE / entry["filename"]
        if not target.exists():
            with urllib.request.urlopen(entry["url"], timeout=600) as response:
                data = response.read()
            expected = entry.get("hashes", {}).get("sha256")
            if expected and hashlib.sha256(data).hexdigest() != expected:
                raise Unavailable(f"sha256 mismatch for {entry['filename']}")
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            partial.rename(target)
        return target
    except (OSError, ValueError, KeyError) as exc:
        cached = sorted(CACHE.glob(f"{project.replace('-', '_')}-{version}*"))
        cached = [p for p in cached if p.is_file() and not p.name.endswith(".part")]
        if cached:   # offline but fetched before
            return cached[0]
        raise Unavailable(f"cannot download {project}=={version} from {INDEX}: {exc}") from exc


def unpacked(project: str, version: str, members: tuple[str, ...] | None = None) -> Path:
    """Directory holding the unpacked package (only ``members`` of a wheel, when given)."""
    archive = download(project, version)
    root = CACHE / f"{project}-{version}-unpacked"
    marker = root / ".complete"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                wanted = [n for n in names if members is None or n in members or ".dist-info/" in n]
                zf.extractall(root, wanted)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(root, filter="data")
            (inner,) = [p for p in root.iterdir() if p.is_dir()]
            for child in inner.iterdir():
                child.rename(root / child.name)
            inner.rmdir()
        marker.write_text(archive.name)
    return root


def require(project: str, version: str, members: tuple[str, ...] | None = None) -> Path:
    """:func:`unpacked`, or skip the calling test (fail when ASCEND_EXT_REQUIRE_DOWNLOADS=1)."""
    try:
        return unpacked(project, version, members)
    except Unavailable as exc:
        if os.environ.get("ASCEND_EXT_REQUIRE_DOWNLOADS") == "1":
            pytest.fail(f"{exc} (ASCEND_EXT_REQUIRE_DOWNLOADS=1: downloads must work here)")
        pytest.skip(f"{exc}; the package index is unreachable")


def torch_npu_files() -> Path:
    return require(*TORCH_NPU, members=TORCH_NPU_MEMBERS)


def vllm_ascend_source() -> Path:
    return require(*VLLM_ASCEND)
