# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create ./.venv on first use (Python >= 3.10 with pip and venv needed).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 are the pair whose vision processors import cleanly on CPU-only machines
# (PyPI has no CPU torchvision wheel; see docs in README "Installation").
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all lint bench clean

$(BIN)/iadr1:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[train,api,test]"

install: $(BIN)/iadr1

demo: install
	$(BIN)/iadr1 demo --out demo_out

# pytest exits 5 when it collected nothing: a run that tested nothing is a failure.
test: install
	$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; exit 1; }; exit $$rc

test-all: install
	$(BIN)/python -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; exit 1; }; exit $$rc

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
