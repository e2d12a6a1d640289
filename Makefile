# Targets named in the README. VENV defaults to .venv; CI builds its own from nothing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch, pinned so that a fresh install is quick.
TORCH_PIN ?= torch==2.13.0
TEST_PINS ?= triton==3.8.0 transformers==5.17.0 accelerate==1.15.0 lightning==2.6.6 mnist1d==0.0.2.post1
# The oldest Triton the kernels must compile with (the GPU image's); installed beside the venv's.
TRITON_COMPAT ?= triton==3.6.0
GPU_CHECK_OUT ?= gpu-check

.PHONY: install demo test bench-smoke docs bench aot aot-compat gpu-check mutants clean

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

# pip runs only when pyproject.toml or the pins have changed since the last install: the stamp's
# prerequisites are pyproject.toml and a record of the pins, which is rewritten only when they differ.
INSTALLED := $(VENV)/.installed
PINS_RECORD := $(VENV)/.pins
PINS := $(strip $(TORCH_PIN) $(TEST_PINS))

ifneq '$(shell cat $(PINS_RECORD) 2>/dev/null)' '$(PINS)'
$(PINS_RECORD): FORCE
endif
$(PINS_RECORD): | $(PYTHON)
	printf '%s\n' '$(PINS)' > $@

$(INSTALLED): pyproject.toml $(PINS_RECORD) | $(PYTHON)
	$(PYTHON) -m pip install --quiet "$(TORCH_PIN)" $(TEST_PINS) -e ".[test,demo,bench,hf,lightning,docs]"
	touch $@

install: $(INSTALLED)

FORCE:

demo: install
	$(PYTHON) examples/train.py

# The test suite.
test: install
	$(PYTHON) -m pytest -q tests

# Every benchmark once as a smoke test, and the benchmark runner's own tests (timings are never
# asserted); slower than the suite, so a target of its own, which CI runs after it.
bench-smoke: install
	$(PYTHON) -m pytest -q benchmarks --benchmark-disable

# The documentation site, built into site/; --strict makes a broken link or a missing reference an error.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

bench: install
	$(PYTHON) benchmarks/run.py --save

aot: install
	$(PYTHON) -m gan_kernels.kernels.aot --arch 90

# Every kernel variant must also compile with TRITON_COMPAT: its compiler is checked here, without a GPU.
aot-compat: install
	$(PYTHON) -m pip install --quiet --no-deps --upgrade --target $(VENV)/triton-compat "$(TRITON_COMPAT)"
	PYTHONPATH=$(VENV)/triton-compat $(PYTHON) -m gan_kernels.kernels.aot --arch 90

# On a GPU machine, with the system Python (no virtual environment, no installs).
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

# Plant known bugs one at a time and check that the tests catch each (slow; not part of `test`).
mutants: install
	$(PYTHON) tests/mutation_check.py

clean:
	rm -rf $(VENV) site build dist *.egg-info .pytest_cache .hypothesis .benchmarks
