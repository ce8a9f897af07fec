# Two commands on a fresh machine: `make demo` and `make test`; `make claims` checks the papers' claims at
# full scale. Both test tiers run on two pytest workers (pytest-xdist, one torch thread each).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test claims install clean bench

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; run: make PYTHON=python3 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/traitlens demo --out demo-report

# Unit and contract tests, and every claim at tiny scale (direction and margin of each effect).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not claims"

# The claims at full scale: the figures README quotes. Each test module runs on one worker (loadfile), so that
# two workers never train the same cached model. TRAITLENS_TEST_CACHE keeps what they make (keyed by
# recipe and source, so only the same code reuses it).
TRAITLENS_TEST_CACHE ?= $(HOME)/.cache/traitlens-claims
claims: $(STAMP)
	TRAITLENS_TEST_CACHE=$(TRAITLENS_TEST_CACHE) $(BIN)/python -m pytest -q -n 2 --dist loadfile -m claims

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f; done

clean:
	rm -rf demo-report .pytest_cache
