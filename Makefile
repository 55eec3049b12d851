PYTHON ?= python3
VENV := venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: venv run test test-all clean-outputs

# Create the virtual environment (or bring it up to date with requirements.txt).
venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

# Run the default demo experiment.
run: $(STAMP)
	$(PY) experiments/run.py experiments/configs/mnist_demo.yaml

# Run the test suite (slow tests are skipped; `make test-all` runs them too).
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q --runslow

clean-outputs:
	rm -rf experiments/outputs
