#!/usr/bin/env bash
# Create (or bring up to date) the resnest_mm virtual environment with the pinned, verified stack.
#
#   bash tools/install.sh            # venv at $RESNEST_MM_VENV (default ~/.venvs/resnest_mm)
#
# Idempotent: a second run only checks what is there (seconds). The first run builds mmcv 2.1.0
# with its compiled ops from source (8 to 15 minutes on 2 cores); pip's wheel cache keeps the
# result, so later environments install it in seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RESNEST_MM_VENV:-$HOME/.venvs/resnest_mm}
PY=${PYTHON:-python3}
C="$ROOT/requirements/constraints.txt"

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pipi() { "$VPY" -m pip install -q --disable-pip-version-check -c "$C" "$@"; }

# Quick path: everything pinned is already importable at the right version.
if "$VPY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
want = {'torch': '2.13.0', 'mmengine': '0.10.7', 'mmcv': '2.1.0', 'mmdet': '3.3.0',
        'mmsegmentation': '1.2.2', 'resnest': '0.0.5'}
for name, ver in want.items():
    # Local version labels do not count: the CPU wheel is 2.13.0+cpu.
    if md.version(name).split('+')[0] != ver:
        sys.exit(1)
for name in ('pytest', 'pycocotools', 'ftfy', 'regex', 'onnx', 'onnxruntime', 'onnxscript',
             'matplotlib', 'rich'):
    md.version(name)
import mmcv.ops  # compiled ops present
PYEOF
then
    log "pinned stack already present in $VENV"
else
    log "installing build tools"
    pipi --upgrade pip >/dev/null 2>&1 || true
    pipi -r "$ROOT/requirements/build.txt"
    # torch first, and the CPU build by name: PyPI's plain torch==2.13.0 is the CUDA build
    # (GBs). The constraints then keep any later requirement from replacing it. An installed
    # torch 2.13.0 (a CUDA build put there on purpose) is kept.
    # Another torch version (say a CUDA build the environment was made for) is not replaced.
    HAVE_TORCH=$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
    if [ "${HAVE_TORCH%%+*}" = "2.13.0" ]; then
        log "keeping the installed torch $HAVE_TORCH"
    elif [ -n "$HAVE_TORCH" ]; then
        log "$VENV holds torch $HAVE_TORCH; this stack is pinned to torch 2.13.0, and replacing"
        log "  yours would drop its build. Install torch 2.13.0 there (its CUDA build on a GPU"
        log "  machine) and run again, or set RESNEST_MM_VENV to another environment."
        exit 1
    else
        log "installing torch 2.13.0+cpu"
        if ! pipi "torch==2.13.0+cpu"; then
            log "no torch 2.13.0+cpu wheel where pip looks: add PyTorch's CPU index"
            log "  (export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) and run again"
            exit 1
        fi
    fi
    log "installing mmengine"
    pipi mmengine==0.10.7
    if ! "$VPY" -c 'import mmcv.ops' 2>/dev/null; then
        log "installing mmcv 2.1.0 with compiled ops (built from source the first time: 8-15 min)"
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} pipi --no-build-isolation mmcv==2.1.0
    fi
    log "installing mmdet, mmsegmentation and test requirements"
    pipi -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/mminstall.txt" \
        -r "$ROOT/requirements/tests.txt"
fi

# The project itself, editable, so tools/ and configs/ find `resnest_mm` from any directory.
pipi --no-deps --no-build-isolation -e "$ROOT" >/dev/null
"$VPY" - <<'PYEOF'
import torch, mmcv, mmdet, mmseg, mmengine, resnest_mm
from mmcv.ops import DeformConv2d  # noqa: F401  compiled ops
print(f'[install] ok: torch {torch.__version__}, mmengine {mmengine.__version__}, '
      f'mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, '
      f'resnest_mm {resnest_mm.__version__}')
PYEOF
log "activate with: source $VENV/bin/activate"
