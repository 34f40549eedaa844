# Two entry points (see README): `make test` and `make demo`. Both set up .venv first;
# set-up runs again only when setup.py changes, so a second call is fast.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jseg-installed

.PHONY: setup test demo parity

setup: $(STAMP)

$(STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,convert,plot,parity]"
	@# mmengine (parity extra) pulls opencv-python, which needs libGL; keep only the
	@# headless build of cv2, at the version pip resolved.
	@v=$$($(PY) -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))'); \
	if $(PY) -m pip show -q opencv-python 2>/dev/null; then \
	  $(PY) -m pip uninstall -q -y opencv-python && \
	  $(PY) -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "opencv-python-headless==$$v"; \
	fi
	@# Compiles Jittor's core on a new machine (a few minutes), then reports the device.
	$(PY) tools/check_env.py
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

# The slow parity cases too (B/L eval, S training step) against mmsegmentation.
parity: setup
	JSEG_PARITY_ALL=1 $(PY) -m pytest -q tests/test_parity.py

DEMO_CFG := configs/demo/segnext_mscan-t_demo.yaml
DEMO_DIR := work_dirs/demo

demo: setup
	$(PY) tools/make_demo_data.py --out data/demo
	$(PY) tools/run_net.py --config-file $(DEMO_CFG) --task train --work-dir $(DEMO_DIR) --no-progress
	$(PY) tools/run_net.py --config-file $(DEMO_CFG) --task test --work-dir $(DEMO_DIR) \
		--load-from $(DEMO_DIR)/checkpoints/iter_00000400.pkl --save-dir $(DEMO_DIR)/predictions
	@echo "demo done: metrics table in $(DEMO_DIR)/train_*.log, predictions in $(DEMO_DIR)/predictions/"
