# The two commands a newcomer needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pip on Python 3.11 takes torch 2.14.1 / torchvision 0.29.1 from this machine's disk (CUDA build,
# runs on the CPU). GPU users: see README, "GPU installs".
CONSTRAINTS := requirements/constraints.txt

.PHONY: install test test-fast demo clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (histosynth needs Python >= 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,app]"
	# test-only: CompVis `ldm` modules to check PathLDM conversion against (its own deps are pinned above)
	$(BIN)/python -m pip install --quiet --no-deps -c $(CONSTRAINTS) stable-diffusion-sdkit==2.1.5
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# The unit tier: at least one test per module, under a minute on 2 cores.
test-fast: install
	$(BIN)/python -m pytest -q -m unit

demo: install
	$(BIN)/histosynth demo --out demo-output

clean:
	rm -rf $(VENV) demo-output .pytest_cache
