PYTHON ?= python3
VENV := venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: venv run data test test-all lint notebooks clean-outputs

# Create the virtual environment (or bring it up to date): the pinned requirements, then this project as an
# editable package (so `import experiments, optimizers, ...` works from anywhere).
venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Run the default demo experiment.
run: $(STAMP)
	$(PY) experiments/run.py experiments/configs/mnist_demo.yaml

# Download MNIST into data/ (or $$NNDT_DATA) with torchvision's downloader.
data: $(STAMP)
	$(PY) -m problems.mnist_data

# The test suite in minutes: unit and small integration tests (torchrun, notebooks and other subprocess-heavy
# tests carry the `integration` marker, long ones `slow`: `make test-all` runs them too).
test: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-all: $(STAMP)
	$(PY) -m pytest -q --runslow

# Lint and import order with ruff, then the static type check of the package with mypy ([tool.ruff], [tool.mypy]
# in pyproject.toml; bodies of unannotated functions too): unused imports, wrong keyword arguments, missing
# attributes, None where a value is needed.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

# Execute the shipped notebooks on small runs and store their outputs (pictures a reader of the repository sees).
notebooks: $(STAMP)
	$(PY) -m experiments.refresh_notebooks

clean-outputs:
	rm -rf experiments/outputs
