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
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,convert,plot]"
	@# Compiles Jittor's core on a new machine (a few minutes), then reports the device.
	$(PY) tools/check_env.py
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

DEMO_CFG := configs/demo/segnext_mscan-t_demo.yaml
DEMO_DIR := work_dirs/demo

demo: setup
	$(PY) tools/make_demo_data.py --out data/demo
	$(PY) tools/run_net.py --config-file $(DEMO_CFG) --task train --work-dir $(DEMO_DIR) --no-progress
	$(PY) tools/run_net.py --config-file $(DEMO_CFG) --task test --work-dir $(DEMO_DIR) \
		--load-from $(DEMO_DIR)/checkpoints/iter_00000400.pkl --save-dir $(DEMO_DIR)/predictions
	@echo "demo done: metrics table in $(DEMO_DIR)/train_*.log, predictions in $(DEMO_DIR)/predictions/"
