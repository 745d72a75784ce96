# Each target sets itself up: the virtual environment is created and the project installed
# into it when missing or when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
UI_PORT ?= 5000

.PHONY: venv test lint demo ui report clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# A small real sweep on the embedded dataset: the stock model against DAT after SPPF.
demo: $(STAMP)
	$(PY) -m dat_exp -m placement=none,sppf device=cpu

# Analysis of the latest sweep (or: make report ARGS="--sweep <parent run id>").
report: $(STAMP)
	$(PY) -m dat_exp.report $(ARGS)

# The MLflow UI over the same store, on loopback only.
ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db \
		--host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
