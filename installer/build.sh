#!/usr/bin/env bash
# Build LVLM Studio as a self-contained folder (no Python needed to run it) and pack it as a tarball.
#
#   installer/build.sh                      CPU torch (torch==2.13.0), build venv in build/installer/venv
#   installer/build.sh --venv DIR           use (or create) the build venv DIR
#   installer/build.sh --venv DIR --keep-torch
#                                           keep the torch already in DIR: the CUDA build of PyTorch you
#                                           installed there yourself (the bundle then holds its CUDA
#                                           libraries too, several GB; the 1.5 GB target is for CPU torch)
#
# Writes build/installer/dist/lvlm-studio/ (the app folder: run ./lvlm-studio in it),
# build/installer/lvlm-studio-<version>-linux-<arch>.tar.gz, and build/installer/build-times.txt
# (seconds per step, read by installer/smoke.sh). Linux; the Windows and macOS builds are in
# .github/workflows/installer.yml (same spec). Runs at low CPU priority (nice).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build/installer
VENV=$OUT/venv
KEEP_TORCH=0
TORCH_SPEC="torch==2.13.0"  # pinned: an unpinned torch pulls GBs of CUDA wheels
PYINSTALLER_SPEC="pyinstaller==6.22.3"

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) VENV=$(realpath -m "$2"); shift 2 ;;
        --keep-torch) KEEP_TORCH=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1. See installer/build.sh --help." >&2; exit 2 ;;
    esac
done

NICE="nice -n 15"
mkdir -p "$OUT"
TIMES=$OUT/build-times.txt
: > "$TIMES"
SECONDS=0
step_start=0
step() {  # step NAME: note the time the previous step took, and start the next
    echo "== [${SECONDS}s] $*"
    step_start=$SECONDS
}
took() { echo "$1 $((SECONDS - step_start))" >> "$TIMES"; }

step "build environment: $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    if [ "$KEEP_TORCH" = 1 ]; then
        echo "error: --keep-torch needs an existing venv with your torch in it; $VENV has no Python." >&2
        exit 2
    fi
    $NICE python3 -m venv "$VENV"
    $NICE "$VENV/bin/pip" install -q --upgrade pip
fi
PY=$VENV/bin/python
if [ "$KEEP_TORCH" = 1 ]; then
    "$PY" -c "import torch" 2>/dev/null || { echo "error: --keep-torch: $VENV has no torch. Install yours there first." >&2; exit 2; }
else
    $NICE "$PY" -m pip install -q "$TORCH_SPEC"
fi
$NICE "$PY" -m pip install -q ".[gui]" "$PYINSTALLER_SPEC"
# The project itself, not editable: PyInstaller then finds its modules and its dist-info (entry points).
$NICE "$PY" -m pip install -q --no-deps --force-reinstall .
took venv

if [ "$(uname -s)" = Linux ]; then
    # Present here, Qt's window libraries travel in the bundle; absent, each user must install them.
    for lib in libxcb-cursor.so.0 libxcb-icccm.so.4 libxcb-keysyms.so.1; do
        if ! { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q "$lib"; then
            echo "note: $lib is not on this machine, so the bundle will not carry it: its users must install it" \
                 "(apt-get install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1) for the window to open." >&2
        fi
    done
fi

step "freeze (PyInstaller, one folder)"
rm -rf "$OUT/dist/lvlm-studio"
# From outside the checkout: PyInstaller then takes the installed project and its dist-info (entry
# points), not the source folder and a stray egg-info in it.
(cd "$OUT" && $NICE "$PY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$OUT/dist" --workpath "$OUT/work" "$ROOT/installer/lvlm-studio.spec")
APP=$OUT/dist/lvlm-studio
took freeze

step "prune what the app never uses"
INTERNAL=$APP/_internal
# Headers, CMake files and static libraries are for compiling against torch; the test folders hold tests.
rm -rf "$INTERNAL/torch/include" "$INTERNAL/torch/share" "$INTERNAL/torch/test"
find "$INTERNAL" \( -name "*.a" -o -name "*.pyi" \) -type f -delete
find "$INTERNAL" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
took prune

step "desktop entry, icon, install notes"
cp installer/icon/lvlm-studio.png "$APP/lvlm-studio.png"
cp installer/lvlm-studio.desktop "$APP/lvlm-studio.desktop"
cp installer/install-desktop-entry.sh "$APP/install-desktop-entry.sh"
cp installer/INSTALL.txt "$APP/INSTALL.txt"
VERSION=$("$PY" -c "from importlib.metadata import version; print(version('lvlm-studio'))")
ARCH=$(uname -m)
TARBALL=$OUT/lvlm-studio-$VERSION-linux-$ARCH.tar.gz
took extras

step "pack $TARBALL"
$NICE tar -C "$OUT/dist" -czf "$TARBALL" lvlm-studio
took pack

echo "total $SECONDS" >> "$TIMES"
echo "== [${SECONDS}s] done"
echo "app folder: $APP ($(du -sh "$APP" | cut -f1))"
echo "tarball:    $TARBALL ($(du -sh "$TARBALL" | cut -f1))"
