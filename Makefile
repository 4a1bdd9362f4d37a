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

# The main job, end to end, at the smoke profile (under a minute on 2 cores): look at the four
# tasks, collect D'Claw's datasets with SAC (its smoke expert already beats the random policy,
# so normalized scores are defined), train LOMPO, publish the run, render Table I.
# Everything goes under $(DEMO_DIR); the repository's leaderboard is not touched.
demo: setup
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	for env in walker dclaw-screw adroit-pen sawyer-door; do \
		$(LB) envs show $$env --out $(DEMO_DIR)/$$env.png || exit 1; done
	LOMPO_BENCH_HOME=$(DEMO_DIR)/home $(LB) collect dclaw-screw --split all --profile smoke
	LOMPO_BENCH_HOME=$(DEMO_DIR)/home $(LB) run lompo --env dclaw-screw --split medium-expert --profile smoke
	LOMPO_BENCH_HOME=$(DEMO_DIR)/home $(LB) leaderboard publish --csv $(DEMO_DIR)/leaderboard.csv \
		$(DEMO_DIR)/home/runs/lompo/smoke/dclaw-screw/medium-expert/seed0
	$(LB) leaderboard table --csv $(DEMO_DIR)/leaderboard.csv --profile smoke --format md --out $(DEMO_DIR)/RESULTS.md
	@echo "demo done: filmstrips, datasets, run and table under $(DEMO_DIR)/ (RESULTS.md)"

smoke: test

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

table: setup
	$(LB) leaderboard table --format md --out leaderboard/RESULTS.md
	$(LB) leaderboard plot --out leaderboard/RESULTS.png

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
