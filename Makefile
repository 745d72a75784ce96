# Each target sets itself up: the virtual environment is created and the project installed
# into it when missing or when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The Ray launcher's own environment: it pins cloudpickle<3, which Ultralytics' DDP cannot use.
RAY_VENV := .venv-ray
RAY_STAMP := $(RAY_VENV)/.installed-ray
UI_PORT ?= 5000

.PHONY: venv venv-ray test lint demo bench ui report server clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv-ray: $(RAY_STAMP)

$(RAY_STAMP): pyproject.toml
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[ray]'
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The tests run in .venv; the Ray launcher's test drives .venv-ray's python (DAT_EXP_RAY_PYTHON).
test: lint $(RAY_STAMP)
	DAT_EXP_RAY_PYTHON=$(CURDIR)/$(RAY_VENV)/bin/python $(PY) -m pytest

# A small real sweep on the embedded dataset: the stock model against DAT after SPPF.
demo: $(STAMP)
	$(PY) -m dat_exp -m placement=none,sppf device=cpu

# Speed and memory of the attention paths and of each placement (ARGS="--full" on a GPU).
bench: $(STAMP)
	$(PY) -m dat_exp.bench $(ARGS)

# Analysis of the latest sweep (or: make report ARGS="--sweep <parent run id>").
report: $(STAMP)
	$(PY) -m dat_exp.report $(ARGS)

# The MLflow UI over the same store, on loopback only.
ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db \
		--host 127.0.0.1 --port $(UI_PORT)

# An MLflow tracking server over a database (SQLite here; any SQLAlchemy URI, e.g.
# postgresql://user@db/mlflow, via SERVER_DB=...), with its own artifact root under runs/.
# It binds to loopback unless told otherwise (SERVER_HOST=0.0.0.0 on a shared host).
SERVER_DB ?= sqlite:///$(CURDIR)/runs/server/mlflow.db
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
server: $(STAMP)
	mkdir -p runs/server/artifacts
	$(VENV)/bin/mlflow server --backend-store-uri $(SERVER_DB) \
		--artifacts-destination $(CURDIR)/runs/server/artifacts \
		--host $(SERVER_HOST) --port $(SERVER_PORT)

clean:
	rm -rf $(VENV) $(RAY_VENV) .pytest_cache .ruff_cache
