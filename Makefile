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
	$(PY) -m pip install -q -e ".[release,quant,dev]"
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
