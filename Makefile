# Two entry points (see README): `make test` and `make demo`. Both set up .venv first;
# set-up runs again only when setup.py changes, so a second call is fast.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jseg-installed

.PHONY: setup test demo

setup: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test]"
	@# Compiles Jittor's core on a new machine (a few minutes), then reports the device.
	$(PY) tools/check_env.py
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) tools/demo_job.py
