"""The Ascend image pairs the plugin with a vLLM it supports: docker/Dockerfile.npu's
vllm-ascend tag, the vLLM that release builds on (its own Dockerfile's VLLM_TAG) and the
general-plugin names it enables, checked against pyproject's declared range and the
release's real entry points (its sdist, downloaded from the package index)."""

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ascend_ext.integration import compat

from .npu import ascend_packages

ROOT = Path(__file__).resolve().parents[1]
OURS = {"ascend_ext", "ascend_ext_backends"}


def declared_range() -> SpecifierSet:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (spec,) = extras["vllm"]
    return SpecifierSet(spec.removeprefix("vllm"))


def _arg(text: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=\"?([^\"\s]+)\"?", text, re.M)
    assert match, f"no ARG {name}"
    return match.group(1)


def _entry_points(source: Path, group: str) -> set[str]:
    text = (source / "vllm_ascend.egg-info" / "entry_points.txt").read_text()
    section = text.split(f"[{group}]", 1)[1].split("\n[", 1)[0]
    return {line.split("=")[0].strip() for line in section.splitlines() if "=" in line}


def image_problems(dockerfile: str, source: Path, release: str) -> list[str]:
    """What is wrong with an Ascend Dockerfile given the vllm-ascend release's source."""
    problems = []
    supported = declared_range()
    tag = _arg(dockerfile, "VLLM_ASCEND_VERSION").lstrip("v")
    if tag != release:
        problems.append(f"image tag v{tag} is not the checked vllm-ascend release {release}")
    ascend_version = Version(tag)
    if Version(f"{ascend_version.major}.{ascend_version.minor}") not in supported:
        problems.append(f"vllm-ascend {tag} tracks a vLLM outside {supported}")
    vllm_in_image = _arg((source / "Dockerfile").read_text(), "VLLM_TAG").lstrip("v")
    if Version(vllm_in_image) not in supported:
        problems.append(f"the image's vLLM {vllm_in_image} is outside {supported}")
    plugins = re.search(r'VLLM_PLUGINS="([^"]*)"', dockerfile)
    named = set(plugins.group(1).split(",")) if plugins else set()
    general = _entry_points(source, "vllm.general_plugins")
    platform = _entry_points(source, "vllm.platform_plugins")
    if not OURS <= named:
        problems.append(f"VLLM_PLUGINS lacks {sorted(OURS - named)}")
    if named - OURS - general:
        problems.append(f"VLLM_PLUGINS names plugins vllm-ascend does not have: {sorted(named - OURS - general)}")
    if general - named:
        problems.append(f"VLLM_PLUGINS leaves out vllm-ascend general plugins {sorted(general - named)}")
    if named & platform:
        problems.append(f"VLLM_PLUGINS enables vllm-ascend's platform plugin {sorted(named & platform)}")
    return problems


def test_declared_range_is_the_plugins():
    assert str(declared_range()) == str(SpecifierSet(compat.SUPPORTED_VLLM))
    assert compat.SUPPORTED_VLLM in (ROOT / "README.md").read_text()


def test_npu_image_versions_and_plugins():
    source = ascend_packages.vllm_ascend_source()
    dockerfile = (ROOT / "docker" / "Dockerfile.npu").read_text()
    assert image_problems(dockerfile, source, ascend_packages.VLLM_ASCEND[1]) == []


def test_control_the_old_image_is_refused():
    """The image as it was (vllm-ascend v0.23.0, a made-up plugin) fails every check."""
    source = ascend_packages.vllm_ascend_source()
    dockerfile = (ROOT / "docker" / "Dockerfile.npu").read_text()
    old = dockerfile.replace("ARG VLLM_ASCEND_VERSION=v0.30.0rc2", "ARG VLLM_ASCEND_VERSION=v0.23.0").replace(
        "ascend_model,", "ascend_enhanced_model,")
    problems = image_problems(old, source, ascend_packages.VLLM_ASCEND[1])
    assert any("v0.23.0" in p for p in problems) and any("outside" in p for p in problems)
    assert any("ascend_enhanced_model" in p for p in problems) and any("leaves out" in p for p in problems)
