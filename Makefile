# The newcomer's path: `make demo` (see it work) and `make test` (check it works).
# Both create the virtualenv and install everything on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
LB := $(VENV)/bin/lompo-bench
DEMO_DIR ?= demo-output

.PHONY: setup test test-slow demo smoke bench table clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# The main job at a profile that finishes within minutes on 2 cores.
demo: setup
	mkdir -p $(DEMO_DIR)
	for env in walker dclaw-screw adroit-pen sawyer-door; do \
		$(LB) envs show $$env --out $(DEMO_DIR)/$$env.png || exit 1; done

smoke: test

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

table: setup
	$(LB) leaderboard table --format md --out leaderboard/RESULTS.md

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
