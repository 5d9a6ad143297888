# Lorekeeper: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with pinned dependencies

.PHONY: run
run: $(STAMP) ## Run the service on the embedded default with a demo tenant and story
	$(BIN)/lore serve --demo

.PHONY: test
test: $(STAMP) ## Run the whole test suite (real PostgreSQL and Valkey, started embedded)
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff and strict mypy on the domain packages
	$(BIN)/ruff check app rag ecs tests evals
	$(BIN)/mypy rag ecs

.PHONY: bench bench-ingest bench-ecs bench-context
bench: bench-ingest bench-ecs bench-context ## Run every benchmark in evals/perf (about 30 min) -> evals/perf/results/

bench-ingest: $(STAMP) ## Ingest: the ingest path alone, then with the in-process projector (about 5 min)
	$(BIN)/python -m evals.perf.bench_ingest --projector off --out evals/perf/results/ingest.json
	$(BIN)/python -m evals.perf.bench_ingest --projector in-process --out evals/perf/results/ingest_with_projector.json

bench-ecs: $(STAMP) ## ECS: projector at 100,000 events, worker scaling, entity reads, cache, graph (about 5 min)
	$(BIN)/python -m evals.perf.bench_ecs

bench-context: $(STAMP) ## Context requests at 10,000 and 100,000 events, 1 and 8 clients (about 17 min, 6 of them embedding the events)
	$(BIN)/python -m evals.perf.bench_context

# The scale study: 1,000,000 events loaded with `lore ingest --bulk`, index builds, recall, projector,
# rebuild and context latency. Needs ~5 GB of temporary disk and up to an hour on 2 cores;
# `make bench-scale SCALE_ARGS="--events 100000"` is a quicker check.
SCALE_ARGS ?=

.PHONY: bench-scale
bench-scale: $(STAMP) ## Scale study at 1M events -> evals/perf/results/scale.json (up to an hour)
	$(BIN)/python -m evals.perf.bench_scale $(SCALE_ARGS)

.PHONY: load
load: $(STAMP) ## 10-minute mixed load with faults -> evals/perf/results/load.json
	$(BIN)/python -m evals.perf.load

# The standard evaluation suite. bAbI and ProPara are capped at EVAL_LIMIT queries each (whole
# stories/paragraphs in file order): all of them (4 x 1,000 bAbI + 4,271 ProPara questions, five
# modes each, ~0.27 s per question) would take ~40 min on an idle 2-core machine and well over an
# hour on a busy one; with 300 the suite took 10 min idle (measured; 20-25 min with other load).
# An interrupted `make eval` continues with `make eval EVAL_ARGS=--resume`.
EVAL_SUITE ?= generator:1000 generator:10000 babi:1 babi:2 babi:5 babi:6 propara
EVAL_LIMIT ?= 300
EVAL_ARGS ?=
EVAL_SMOKE_OUT ?= .data/eval-smoke

.PHONY: eval
eval: $(STAMP) ## Evaluation suite, all modes side by side (10-25 min) -> evals/reports/latest/
	$(BIN)/lore eval run $(EVAL_SUITE) --limit $(EVAL_LIMIT) --out evals/reports/latest $(EVAL_ARGS)

.PHONY: eval-smoke
eval-smoke: $(STAMP) ## Small evaluation (generator, 300 events); fails below the quality gate
	$(BIN)/lore eval run generator:300 --out $(EVAL_SMOKE_OUT) --service-data-dir temp --fail-under 0.95 $(EVAL_ARGS)

# Fuzzing: schemathesis against the API's own OpenAPI schema (tests/fuzz), every operation, valid
# and invalid input, on the embedded servers. The short run (10 examples per operation) is part of
# `make test`; this is the long one, with a new seed each time (it is echoed: replay a run with
# `make fuzz FUZZ_SEED=...`). Bounded twice: once FUZZ_BUDGET seconds are spent the operations not
# yet fuzzed are skipped (and say so), and pytest-timeout ends any one operation after
# FUZZ_TIMEOUT seconds. 200 examples (~5,300 requests) took 1-2.5 min on the 2-core machine.
FUZZ_EXAMPLES ?= 200
FUZZ_BUDGET ?= 900
FUZZ_TIMEOUT ?= 600
FUZZ_SEED ?= $(shell date +%s)

.PHONY: fuzz
fuzz: $(STAMP) ## Fuzz the API against its OpenAPI schema (schemathesis; bounded, 1-3 min)
	LORE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LORE_FUZZ_BUDGET_S=$(FUZZ_BUDGET) LORE_FUZZ_SEED=$(FUZZ_SEED) \
	  $(BIN)/pytest tests/fuzz -p no:cacheprovider --timeout=$(FUZZ_TIMEOUT) $(PYTEST_ARGS)

.PHONY: lock
lock: ## Re-pin dependencies into requirements.lock from a fresh resolve
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet -e '.[dev]'
	{ echo "# Pinned versions of every dependency, installed as pip constraints by the Makefile."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

.PHONY: clean
clean: ## Remove the virtual environment and caches (keeps .data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
