# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
VENV ?= .venv
STAMP := $(VENV)/.cleanroom-installed

.PHONY: install demo test lint clean-demo

$(STAMP): pyproject.toml requirements/spacy-model.txt requirements/notebook.txt package.json package-lock.json scripts/install.sh scripts/system-deps.sh
	VENV=$(VENV) bash scripts/install.sh
	@touch $@

install: $(STAMP)  ## Create .venv and .venv-notebook; install Python, npm and apt dependencies

demo: install  ## Seed the demo consortium and start Cleanroom on embedded defaults
	$(VENV)/bin/cleanroom demo seed
	$(VENV)/bin/cleanroom up

test: install  ## Run the whole suite (SQLite and PostgreSQL)
	VENV=$(VENV) bash scripts/test.sh $(PYTEST_ARGS)

lint: install  ## ruff and mypy
	$(VENV)/bin/ruff check hub anonymisation policies sandbox contracts tests benchmarks
	$(VENV)/bin/ruff format --check hub anonymisation policies sandbox contracts tests benchmarks
	$(VENV)/bin/mypy

clean-demo:  ## Forget the demo data directory
	rm -rf cleanroom-data
