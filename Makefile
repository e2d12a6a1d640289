# Targets named in the README. VENV defaults to .venv; CI builds its own from nothing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The CPU build of torch, pinned so that a fresh install is quick.
TORCH_PIN ?= torch==2.13.0
TEST_PINS ?= triton==3.8.0

.PHONY: install demo test bench aot mutants clean

$(PYTHON):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

install: $(PYTHON)
	$(PYTHON) -m pip install --quiet "$(TORCH_PIN)" "$(TEST_PINS)" -e ".[test,demo,bench]"

demo: install
	$(PYTHON) examples/train.py

# The test suite, then every benchmark once as a smoke test (timings are never asserted).
test: install
	$(PYTHON) -m pytest -q tests benchmarks --benchmark-disable

bench: install
	$(PYTHON) benchmarks/run.py --save

aot: install
	$(PYTHON) -m gan_kernels.kernels.aot --arch 90

# Plant known bugs one at a time and check that the tests catch each (slow; not part of `test`).
mutants: install
	$(PYTHON) tests/mutation_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .benchmarks
