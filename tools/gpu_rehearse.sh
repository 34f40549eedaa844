#!/usr/bin/env bash
# Rehearse the offline GPU host on this CPU machine: everything tools/gpu_run.py does there
# except the GPU itself.
#
#   tools/gpu_rehearse.sh [WORK_DIR]        # default: a new folder under /tmp
#
# 1. the bundle (.gpu/), built here if missing (needs the package registry);
# 2. a Python 3.12 venv standing for the host's base environment: numpy 2.x, opencv,
#    pillow, pyyaml, tqdm, scipy and no python3.12-config (made once, reused from WORK_DIR);
# 3. a copy of the repository as a host receives it (tracked and untracked, not ignored,
#    files) plus .gpu/, and an empty HOME (a bare host: Jittor's core compiles from scratch);
# 4. with the network cut (`unshare -n` as root; else only --no-index installs and no
#    proxy): `python tools/gpu_run.py OUT --bundled-headers` (Jittor's core is compiled
#    against the bundle's Python headers, the path a host without Python.h takes);
# 5. checks: probe.txt written, Jittor's numpy 1.26.4 beside the base's numpy 2, Jittor
#    started (check_env.log) and its report in rows.jsonl (the rows that need no GPU), and
#    gpu_check's one line "no GPU" with exit 2.
# 6. with REHEARSAL_MMSEG=1, gpu_check's mmseg child on numpy 2 with torch, offline: a
#    Python 3.11 venv (torch 2.13.0, the CPU build these machines hold; torch for 3.12 would
#    be a download of gigabytes) with numpy 2, the bundle's mmseg group (regex for 3.11 in
#    place of the cp312 wheel), timing mmseg's SegNeXt-T inference and training step.
# Prints the time of each step. Environment: PYTHON312 (default: python3.12 on PATH or in
# pyenv), REHEARSAL_KEEP=1 keeps WORK_DIR's host copy and HOME afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${1:-$(mktemp -d /tmp/jseg-gpu-rehearsal.XXXXXX)}")
mkdir -p "$WORK"
say() { printf '[rehearsal %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAILED: $*"; exit 1; }
t_start=$(date +%s)

PY312=${PYTHON312:-}
if [ -z "$PY312" ]; then  # the first python3.12 that runs (a pyenv shim may not)
  for candidate in $(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) \
                   $(command -v python3.12 || true); do
    if "$candidate" -c pass 2>/dev/null; then PY312=$candidate; break; fi
  done
fi
[ -n "$PY312" ] && "$PY312" -c pass 2>/dev/null || fail "no Python 3.12 here (set PYTHON312=/path/to/python3.12)"

if [ ! -f "$ROOT/.gpu/MANIFEST.json" ]; then
  say "building the bundle"
  python3 "$ROOT/tools/gpu_bundle.py"
fi
python3 "$ROOT/tools/gpu_bundle.py" --verify | tail -2

VENV=$WORK/venv
if [ ! -f "$VENV/.ready" ]; then
  say "base environment: Python 3.12 venv with numpy 2 (network: this stands for what the host has)"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "numpy>=2,<3" opencv-python-headless \
    pillow pyyaml tqdm scipy
  touch "$VENV/.ready"
fi
rm -f "$VENV"/bin/python*-config
say "base: $("$VENV/bin/python" -c 'import sys, numpy; print("Python", sys.version.split()[0], "numpy", numpy.__version__)')"

HOST=$WORK/host
OUT=$WORK/out
rm -rf "$HOST" "$OUT" "$WORK/home"
mkdir -p "$HOST" "$WORK/home"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
   | xargs -0 -I{} sh -c 'test -f "{}" && echo "{}"' | tar -cf - -T - ) | tar -xf - -C "$HOST"
cp -r "$ROOT/.gpu" "$HOST/.gpu"
say "host copy: $(du -sh "$HOST" | cut -f1) in $HOST"

# PATH without pyenv (no python3.12-config to find), with g++ and nvcc as a host has them
HOST_PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
run=(env -i HOME="$WORK/home" PATH="$HOST_PATH" LANG=C.UTF-8 TERM=dumb
     "$VENV/bin/python" tools/gpu_run.py "$OUT" --bundled-headers)
offline=()
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  offline=(unshare -n)
  say "network cut with unshare -n"
else
  say "unshare -n not available: running without a proxy, installs are --no-index"
fi
t_run=$(date +%s)
set +e
(cd "$HOST" && "${offline[@]}" "${run[@]}")
code=$?
set -e
t_end=$(date +%s)
say "gpu_run.py exit $code after $((t_end - t_run)) s"

[ -s "$OUT/probe.txt" ] || fail "no probe.txt"
grep -q "Jittor's numpy: *1.26.4" "$OUT/probe.txt" || fail "Jittor's numpy is not the bundle's 1.26.4"
grep -q "^host numpy: *2\." "$OUT/probe.txt" || fail "the base numpy is not 2.x"
grep -q "^device: *CPU" "$OUT/check_env.log" || fail "Jittor did not start (check_env.log)"
grep -q '"check": "device", "result": "CPU' "$OUT/rows.jsonl" || fail "no environment rows in rows.jsonl"
grep -q "gpu_check: no GPU" "$OUT/gpu_check.log" || fail "gpu_check did not say 'no GPU'"
[ "$code" = 2 ] || fail "gpu_run.py should end with gpu_check's exit 2 (no GPU), got $code"
say "steps (from run.log):"
grep -E "^gpu_run: (installed|check_env exit|gpu_check exit|python-config|Python.h)" "$OUT/run.log" | sed 's/^/    /'
if [ "${REHEARSAL_MMSEG:-0}" = 1 ]; then
  MM=$WORK/mmseg-child
  if [ ! -f "$MM/.ready" ]; then
    say "mmseg child: Python 3.11 venv with torch 2.13.0 and numpy 2 (network: the base environment)"
    rm -rf "$MM" && mkdir -p "$MM/wheels"
    python3.11 -m venv "$MM/venv"
    "$MM/venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0 "numpy>=2,<3" \
      pyyaml opencv-python-headless pillow tqdm scipy
    cp "$ROOT"/.gpu/mmseg/*.whl "$MM/wheels/" && rm "$MM"/wheels/regex-*.whl
    regex=$(python3 -c "import json; print(next(e['version'] for e in json.load(open('$ROOT/.gpu/MANIFEST.json'))['files'] if e['dist'] == 'regex'))")
    "$MM/venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$MM/wheels" "regex==$regex"
    "$MM/venv/bin/pip" install -q --no-index --no-deps --target "$MM/site" "$MM"/wheels/*.whl
    touch "$MM/.ready"
  fi
  cat > "$MM/child.py" <<'PY'
import os, sys, numpy as np
from jseg.config import Config, load_config
from jseg.diagnostics import parity
from jseg.diagnostics.benchmark import TorchProcess, make_inputs
cfg = load_config("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml")
# weights: mmseg's own initial ones (the GPU check passes jseg's; there is no Jittor here)
model = parity.build_reference_model(parity.import_reference(), Config.unwrap(cfg.model))
weights = {k: v.numpy() for k, v in model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
worker = TorchProcess(2, device="cpu", env=dict(os.environ, PYTHONPATH=sys.argv[1] + ":."))
print("mmseg child:", worker.info, "beside numpy", np.__version__)
for mode, batch in (("infer", 1), ("train", 2)):
    img, label = make_inputs(batch, 3, 128, 128, 150, seed=0)
    worker.setup(cfg, mode, weights, img, label)
    times = [worker.step() for _ in range(3)]
    print(f"mmseg T {mode} 128x128: {[round(t, 3) for t in times]} s, finite "
          f"{worker.check_finite()}, {worker.memory()}")
worker.close()
PY
  t_mm=$(date +%s)
  (cd "$ROOT" && "${offline[@]}" env -i HOME="$WORK/home" PATH="$HOST_PATH" LANG=C.UTF-8 \
     PYTHONPATH="$MM/site:$ROOT" "$MM/venv/bin/python" "$MM/child.py" "$MM/site") \
     || fail "mmseg's child did not run on numpy 2"
  say "mmseg child on numpy 2 + torch ran in $(( $(date +%s) - t_mm )) s"
fi
say "rehearsal passed in $(( $(date +%s) - t_start )) s (gpu_run.py $((t_end - t_run)) s); output in $OUT"
if [ "${REHEARSAL_KEEP:-0}" != 1 ]; then rm -rf "$HOST" "$WORK/home"; fi
