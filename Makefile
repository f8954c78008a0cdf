# One entry point for set-up and the two jobs the README names.
#   make study  - the whole study on the embedded offline dataset (the main job)
#   make tune   - the study's equal-budget hyperparameter searches (docs/tuning.md), then the
#                 budget check (the headline arms' searches at twice the trials); resumable
#   make test   - the full test suite, slow end-to-end tests included (what CI runs)
#   make check-report - the committed study's pages: files scanned, every page opened in chromium
# Each target creates .venv and installs the project into it when missing, so either
# works as the first command typed on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dml_study-installed
STUDY ?= studies/embedded.yaml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install study tune test test-fast lint bench check-report clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[offline,test]"
	@touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(BIN)/python -m dml_study.study --config $(STUDY)

tune: $(STAMP)
	$(BIN)/python -m dml_study.study tune --config $(STUDY)
	$(BIN)/python -m dml_study.study tune --config $(STUDY) --budget-check

test: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

test-fast: $(STAMP)
	$(BIN)/python -m pytest

check-report: $(STAMP)
	$(BIN)/python -m dml_study.study.report.pagecheck results/$(basename $(notdir $(STUDY))) \
		--min-figures 3 --browser --screenshots $(VENV)/report-screenshots

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
