# `make demo` and `make test` work on a fresh machine with only Python 3.10+: each makes .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean peers-venv

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Train briefly on the built-in synthetic driving scenes, evaluate, then run inference on a generated video and
# a few generated images; pictures, video and predictions.jsonl land in $(DEMO_DIR)/predictions.
demo: $(STAMP)
	$(PY) tools/demo.py --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Ultralytics in its own environment (.venv-peers), for `python tools/benchmark.py peers`; never a dependency.
peers-venv:
	bash tools/peers_venv.sh

clean:
	rm -rf $(VENV) runs *.egg-info
