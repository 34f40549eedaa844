# Two entry points (see README): `make test` and `make demo`. Both set up .venv first;
# set-up runs again only when setup.py or this file changes, so a second call is fast.
# `make demo` installs only what the package needs at run time (and matplotlib); the test
# set-up adds pytest, the dataset converters' extras, the PyTorch parity stack and
# onnx + onnxruntime (export tests) and tensorboardX.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.jseg-runtime
TEST_STAMP    := $(VENV)/.jseg-test

.PHONY: setup test demo parity

setup: $(RUNTIME_STAMP)

$(RUNTIME_STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[plot]"
	@# Where the CUDA toolkit is 13 (Jittor 1.3.11 cannot build with it as released), patch
	@# Jittor's CUDA sources; see docs/gpu.md "CUDA 13". Hash-checked, idempotent, CPU builds unchanged.
	$(PY) tools/jittor_cuda13.py apply --if-cuda13
	@# Compiles Jittor's core on a new machine (a few minutes), then reports the device.
	$(PY) tools/check_env.py
	@touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,convert,plot,parity,export,tensorboard]"
	@# mmengine (parity extra) pulls opencv-python, which needs libGL; keep only the
	@# headless build of cv2, at the version pip resolved.
	@v=$$($(PY) -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))'); \
	if $(PY) -m pip show -q opencv-python 2>/dev/null; then \
	  $(PY) -m pip uninstall -q -y opencv-python && \
	  $(PY) -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "opencv-python-headless==$$v"; \
	fi
	@touch $@

test: $(TEST_STAMP)
	$(PY) -m pytest -q tests

# The slow parity cases too (B/L eval, S training step) against mmsegmentation.
parity: $(TEST_STAMP)
	JSEG_PARITY_ALL=1 $(PY) -m pytest -q tests/diagnostics/test_parity.py

DEMO_CFG  := configs/demo/segnext_mscan-t_demo.yaml
DEMO_DIR  := work_dirs/demo
DEMO_LAST := $(DEMO_DIR)/checkpoints/iter_00000400.pkl

# Trains once: a finished demo model is reused, an interrupted demo training is resumed.
demo: setup
	$(PY) tools/make_demo_data.py --out data/demo
	@if [ -f $(DEMO_LAST) ]; then \
	  echo "demo model already trained: $(DEMO_LAST) (delete $(DEMO_DIR) to train it again)"; \
	else \
	  resume=$$(ls $(DEMO_DIR)/checkpoints/iter_*.pkl >/dev/null 2>&1 && echo "--resume auto"); \
	  $(PY) tools/run_net.py --config-file $(DEMO_CFG) --task train --work-dir $(DEMO_DIR) \
	    --no-progress $$resume; \
	fi
	$(PY) tools/run_net.py --config-file $(DEMO_CFG) --task test --work-dir $(DEMO_DIR) \
		--load-from $(DEMO_LAST) --save-dir $(DEMO_DIR)/predictions
	@echo "demo done: metrics table in $(DEMO_DIR)/train_*.log, predictions in $(DEMO_DIR)/predictions/"
