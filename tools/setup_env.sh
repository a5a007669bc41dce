#!/usr/bin/env bash
# The one set-up path of evit_mm, used alike by the README, CI and users.
#
#   bash tools/setup_env.sh            # create/refresh .venv (idempotent: seconds when ready)
#   bash tools/setup_env.sh --freeze   # rewrite tools/env/constraints.txt from the current .venv
#
# What it does:
#   1. .venv with Python 3.11 (EVIT_MM_PYTHON=/path/to/python3.11 to choose the interpreter);
#   2. torch 2.14.1 / torchvision 0.29.1;
#   3. mmcv 2.1.0 WITH compiled ops: a cached wheel (~/.cache/evit_mm/wheels), a wheel found through pip's
#      PIP_FIND_LINKS, or a build from the PyPI source archive (C++20 for torch >= 2.10; CUDA ops when nvcc
#      and a GPU are present, CPU ops otherwise). A wheel whose ops don't import is removed, never kept;
#   4. everything else from tools/env/requirements*.txt under tools/env/constraints.txt (exact pins);
#   5. `pip install -e .`.
# Environment: EVIT_MM_VENV (default <repo>/.venv), EVIT_MM_PYTHON, EVIT_MM_MMCV_CUDA=0|1 (force the ops
# variant), XDG_CACHE_HOME, PIP_FIND_LINKS, MAX_JOBS (mmcv build parallelism).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVDIR="$ROOT/tools/env"
VENV="${EVIT_MM_VENV:-$ROOT/.venv}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/evit_mm"
START=$(date +%s)

log() { printf 'setup_env: %s\n' "$*" >&2; }
die() {
    printf '\nsetup_env: ERROR: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '  %s\n' "$line" >&2; done
    exit 1
}

# ---------------------------------------------------------------------------------------------- python
find_python() {
    local candidates=()
    [[ -n "${EVIT_MM_PYTHON:-}" ]] && candidates+=("$EVIT_MM_PYTHON")
    candidates+=(python3.11 python3 python)
    local found="" c v
    for c in "${candidates[@]}"; do
        command -v "$c" >/dev/null 2>&1 || continue
        v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
        if [[ "$v" == "3.11" ]]; then
            command -v "$c"
            return 0
        fi
        found+="$c=$v "
    done
    die "Python 3.11 is required (mmcv 2.1.0, mmagic 1.2.0 and the pinned wheels target it); found: ${found:-none}." \
        "Install it (pyenv install 3.11, or apt-get install python3.11 python3.11-venv python3.11-dev)" \
        "and re-run, or point EVIT_MM_PYTHON at a python3.11 executable."
}

VPY="$VENV/bin/python"
# (the grep drops the warnings of machines whose pip.conf names find-links folders that don't exist)
pip_() { "$VPY" -m pip --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

if [[ "${1:-}" == "--freeze" ]]; then
    [[ -x "$VPY" ]] || die "no environment at $VENV; run bash tools/setup_env.sh first."
    {
        echo "# Exact pins for every package of the environment, written by tools/setup_env.sh --freeze."
        echo "# Python 3.11, x86_64 Linux. torch/torchvision come from PyPI (CUDA build; runs on CPU too)."
        pip_ freeze --all --exclude-editable | grep -v -E '^(-e |evit[-_]mm|pip==)' | LC_ALL=C sort -f
    } >"$ENVDIR/constraints.txt"
    log "wrote $ENVDIR/constraints.txt ($(grep -vc '^#' "$ENVDIR/constraints.txt") pins)"
    exit 0
fi

# ------------------------------------------------------------------------------------- fast path: ready
fingerprint() {
    cat "$ENVDIR"/constraints.txt "$ENVDIR"/requirements*.txt "$ROOT/setup.py" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16
}
STAMP="$VENV/.evit_mm_setup"
want_cuda() {
    if [[ -n "${EVIT_MM_MMCV_CUDA:-}" ]]; then
        [[ "$EVIT_MM_MMCV_CUDA" == 1 ]]
        return
    fi
    command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}
CHECK_LOG="$(mktemp)"
trap 'rm -f "$CHECK_LOG"' EXIT
if want_cuda; then MMCV_VARIANT=cuda; else MMCV_VARIANT=cpu; fi
FP="$(fingerprint)-mmcv-$MMCV_VARIANT"

check_mmcv_ops() {
    # Succeeds when mmcv $MMCV_VERSION is installed with its compiled ops (and CUDA ops when wanted).
    "$VPY" - "$MMCV_VERSION" "$MMCV_VARIANT" <<'EOF' >"$CHECK_LOG" 2>&1
import sys
import torch
import mmcv
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
from mmcv.ops import nms, get_compiling_cuda_version
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
if sys.argv[2] == 'cuda':
    assert get_compiling_cuda_version() != 'not available'
EOF
}

if [[ -x "$VPY" && -f "$STAMP" && "$(cat "$STAMP")" == "$FP" ]] && check_mmcv_ops \
    && "$VPY" -c 'import evit_mm' >/dev/null 2>&1; then
    log "environment $VENV is ready ($(($(date +%s) - START)) s)"
    exit 0
fi

# ------------------------------------------------------------------------------------------------ venv
PY="$(find_python)"
if [[ -x "$VPY" ]]; then
    v=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)
    [[ "$v" == "3.11" ]] || die "$VENV exists but holds Python $v, not 3.11." "Remove it (rm -rf $VENV) and re-run."
else
    log "creating $VENV with $PY"
    "$PY" -m venv "$VENV" || die "could not create a venv with $PY." \
        "On Debian/Ubuntu: apt-get install python3.11-venv"
fi
rm -f "$STAMP"
CONSTRAINTS=(-c "$ENVDIR/constraints.txt")

log "installing torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION"
pip_ install -q "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
# mmcv's setup.py and mim import pkg_resources, which setuptools 82 removed.
pip_ install -q "${CONSTRAINTS[@]}" setuptools wheel ninja packaging

# ------------------------------------------------------------------------- requirements (mmcv's too)
# Nothing here depends on mmcv (mmdet/mmseg list it in mminstall.txt only), so mmcv is never pulled from PyPI;
# mmcv's own runtime deps (mmengine, cv2, ...) are needed before its ops can be checked.
log "installing the pinned requirements"
pip_ install -q "${CONSTRAINTS[@]}" -r "$ENVDIR/requirements.txt"

# ------------------------------------------------------------------------------------------------ mmcv
PYTAG=cp311
WHEEL_NAME="mmcv-$MMCV_VERSION-$PYTAG-$PYTAG-linux_$(uname -m).whl"
WHEEL_CACHE="$CACHE_DIR/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$MMCV_VARIANT"

remove_mmcv() { pip_ uninstall -y -q mmcv >/dev/null 2>&1 || true; }

try_wheel() {  # $1: a wheel file or the literal "find-links"; installs it and keeps it only if its ops work
    if [[ "$1" == find-links ]]; then
        pip_ install -q --no-deps --no-index --force-reinstall "mmcv==$MMCV_VERSION" >/dev/null 2>&1 || return 1
    else
        pip_ install -q --no-deps --force-reinstall "$1" >/dev/null 2>&1 || return 1
    fi
    if check_mmcv_ops; then return 0; fi
    log "  that mmcv has no working $MMCV_VARIANT ops ($(tail -n 1 "$CHECK_LOG")); removing it"
    remove_mmcv
    return 1
}

build_mmcv() {
    command -v g++ >/dev/null 2>&1 || die "building mmcv's ops needs a C++ compiler and none was found." \
        "On Debian/Ubuntu: apt-get install build-essential" \
        "Or skip the build with a prebuilt wheel: PIP_FIND_LINKS=/dir/with/$WHEEL_NAME bash tools/setup_env.sh"
    local inc
    inc=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [[ -f "$inc/Python.h" ]] || die "building mmcv's ops needs the Python 3.11 headers ($inc/Python.h is missing)." \
        "On Debian/Ubuntu: apt-get install python3.11-dev"
    if [[ "$MMCV_VARIANT" == cuda ]]; then
        command -v nvcc >/dev/null 2>&1 || die "EVIT_MM_MMCV_CUDA=1 but nvcc is not on PATH."
    fi
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    log "building mmcv $MMCV_VERSION with $MMCV_VARIANT ops from source (about 17 min on 2 cores; cached afterwards)"
    pip_ download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work" \
        || die "could not download the mmcv $MMCV_VERSION source archive from PyPI."
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    local src="$work/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers require C++20; mmcv 2.1.0 hard-codes -std=c++17.
    if "$VPY" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 10))'; then
        sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
        grep -q -- '-std=c++20' "$src/setup.py" || die "could not switch mmcv's build to C++20 (setup.py changed?)."
    fi
    local env=(MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}")
    [[ "$MMCV_VARIANT" == cuda ]] && env+=(FORCE_CUDA=1)
    if ! env "${env[@]}" "$VPY" -m pip --disable-pip-version-check wheel -q --no-build-isolation --no-deps \
        -w "$work/dist" "$src" >"$work/build.log" 2>&1; then
        tail -n 40 "$work/build.log" >&2
        die "the mmcv build failed (last lines above)." "Full log: re-run with the source at $src"
    fi
    mkdir -p "$WHEEL_CACHE"
    cp "$work"/dist/mmcv-*.whl "$WHEEL_CACHE/$WHEEL_NAME"
    try_wheel "$WHEEL_CACHE/$WHEEL_NAME" || {
        rm -f "$WHEEL_CACHE/$WHEEL_NAME"
        die "the freshly built mmcv has no working ops; nothing was kept."
    }
    log "cached the mmcv wheel at $WHEEL_CACHE/$WHEEL_NAME"
}

if check_mmcv_ops; then
    log "mmcv $MMCV_VERSION with $MMCV_VARIANT ops is installed"
elif [[ -f "$WHEEL_CACHE/$WHEEL_NAME" ]] && try_wheel "$WHEEL_CACHE/$WHEEL_NAME"; then
    log "mmcv $MMCV_VERSION installed from the cache $WHEEL_CACHE"
elif [[ -n "${PIP_FIND_LINKS:-}" && "$MMCV_VARIANT" == cpu ]] && try_wheel find-links; then
    log "mmcv $MMCV_VERSION installed from PIP_FIND_LINKS ($PIP_FIND_LINKS)"
else
    remove_mmcv
    build_mmcv
fi

# ------------------------------------------------------------------------------- the rest, then verify
pip_ install -q --no-deps "${CONSTRAINTS[@]}" -r "$ENVDIR/requirements-nodeps.txt"
# (pyproject.toml names the setuptools backend; the pinned setuptools above builds it, offline too)
pip_ install -q --no-deps --no-build-isolation -e "$ROOT"

check_mmcv_ops || { remove_mmcv; die "mmcv lost its ops while installing the requirements (a dependency replaced it?)."; }
"$VPY" -c 'import cv2' 2>/dev/null || die "OpenCV (required by mmengine/mmcv) cannot load its system libraries." \
    "On Debian/Ubuntu: apt-get install libgl1 libglib2.0-0" "$("$VPY" -c 'import cv2' 2>&1 | tail -n 1)"
"$VPY" - <<'EOF' || die "the environment does not import; see the traceback above."
import mmengine, mmdet, mmseg, segment_anything, timm, evit_mm  # noqa: F401
import mmagic.utils  # noqa: F401  (dies on numpy 2: np.bool8)
EOF
echo "$FP" >"$STAMP"
log "environment $VENV is ready ($(($(date +%s) - START)) s)"
