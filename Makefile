# Set-up and the two everyday commands. Everything installs into .venv/;
# torch is pinned to the local CPU build so set-up never pulls CUDA packages.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick test test-slow clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdlens demo --out runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/kdlens demo --quick --out runs/demo-quick

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -s

clean:
	rm -rf $(VENV) runs build src/*.egg-info
