#!/usr/bin/env bash
# Smoke test of the built app folder, run as a workstation without Python would run it.
#
#   installer/smoke.sh [APP_FOLDER]      default: build/installer/dist/lvlm-studio (installer/build.sh)
#
# Every run of the bundle gets an empty environment (env -i) whose PATH has no python in it, a fresh
# HOME, and Qt's offscreen platform. It checks:
#   - `plugins`: the first-party plugins load in the frozen app
#   - `ask` on the demo model: the expected answer
#   - `explain` (raw attention) on the demo model: overlays, maps.npz and run.json written
#   - the app (`--screenshot`): the window opens, answers, and is saved as a PNG (look at it);
#     the time from launch to the window on screen, target <= 5 s
# and prints the bundle's size (target <= 1.5 GB with CPU torch), the tarball's size and the build
# time (build/installer/build-times.txt). Results also go to build/installer/smoke/results.txt.
# On a real X server instead of offscreen: DISPLAY=:99 QT_QPA_PLATFORM_SMOKE=xcb installer/smoke.sh
# Other model families too: SMOKE_MODELS="DIR ..." installer/smoke.sh (each folder gets an `ask`).
# Exit status 0 only when every check passes and the targets are met.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
APP=$(realpath "${1:-build/installer/dist/lvlm-studio}")
OUT=$ROOT/build/installer/smoke
MAX_BYTES=1500000000  # 1.5 GB
MAX_WINDOW_S=5

if [ ! -x "$APP/lvlm-studio" ]; then
    echo "error: no app folder at $APP; build it first with installer/build.sh." >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT/home" "$OUT/empty-path"
RESULTS=$OUT/results.txt
: > "$RESULTS"
failures=0
passes=0
say() { echo "$*" | tee -a "$RESULTS"; }
ok() { say "ok: $*"; passes=$((passes + 1)); }
fail() { say "FAIL: $*"; failures=$((failures + 1)); }

# The bundle's only environment: no python on PATH (the folder is empty), nothing inherited.
bundle() {
    env -i PATH="$OUT/empty-path" HOME="$OUT/home" LANG=C.UTF-8 QT_QPA_PLATFORM="${QT_QPA_PLATFORM_SMOKE:-offscreen}" \
        ${DISPLAY:+DISPLAY=$DISPLAY} "$APP/lvlm-studio" "$@"
}
if env -i PATH="$OUT/empty-path" /bin/sh -c 'command -v python3 || command -v python' >/dev/null; then
    fail "python is on the smoke test's PATH"
fi

SAMPLE=$APP/_internal/resources/samples/shapes.png

say "== plugins"
if bundle plugins > "$OUT/plugins.txt" 2>&1 && ! grep -q "failed" "$OUT/plugins.txt" \
        && grep -q "raw_attention" "$OUT/plugins.txt"; then
    ok "$(grep -c '^  loaded' "$OUT/plugins.txt") plugins loaded"
else
    fail "plugins (see $OUT/plugins.txt)"; cat "$OUT/plugins.txt"
fi

say "== ask"
if bundle ask --image "$SAMPLE" --prompt "describe the image." > "$OUT/ask.txt" 2>&1 \
        && grep -q "a red circle, a blue square and a yellow triangle" "$OUT/ask.txt"; then
    ok "$(grep -m1 "a red circle" "$OUT/ask.txt")"
else
    fail "ask (see $OUT/ask.txt)"; cat "$OUT/ask.txt"
fi

say "== explain"
if bundle explain --method raw_attention --image "$SAMPLE" --prompt "what color is the square?" \
        --param layers=-1 --out "$OUT/explain" > "$OUT/explain.txt" 2>&1 \
        && [ -f "$OUT/explain/maps.npz" ] && [ -f "$OUT/explain/run.json" ] \
        && ls "$OUT/explain"/token00_*.png >/dev/null 2>&1; then
    ok "$(ls "$OUT/explain" | wc -l) files in $OUT/explain"
else
    fail "explain (see $OUT/explain.txt)"; cat "$OUT/explain.txt"
fi

# Families other than the demo's load code that transformers imports only then: SMOKE_MODELS="DIR ..."
# asks each of these model folders too (e.g. tiny models: lvlm_studio.testing.tiny_models.build_tiny_model).
for model in ${SMOKE_MODELS:-}; do
    say "== ask --model $model"
    if bundle ask --model "$model" --image "$SAMPLE" --prompt "describe the image." --max-new-tokens 3 \
            > "$OUT/ask-$(basename "$model").txt" 2>&1; then
        ok "$(grep -m1 '^loaded' "$OUT/ask-$(basename "$model").txt")"
    else
        fail "ask --model $model (see $OUT/ask-$(basename "$model").txt)"; tail -5 "$OUT/ask-$(basename "$model").txt"
    fi
done

say "== app (offscreen screenshot)"
launched=$(date +%s.%N)
if bundle --screenshot "$OUT/window.png" > "$OUT/app.txt" 2>&1 && [ -s "$OUT/window.png" ]; then
    shown=$(sed -n 's/^window on screen at \([0-9.]*\)$/\1/p' "$OUT/app.txt")
    window_s=$(awk -v a="$launched" -v b="$shown" 'BEGIN { printf "%.2f", b - a }')
    ok "$OUT/window.png; window on screen ${window_s} s after launch (target <= ${MAX_WINDOW_S} s)"
    if awk -v s="$window_s" -v m="$MAX_WINDOW_S" 'BEGIN { exit !(s > m) }'; then
        fail "window took ${window_s} s (> ${MAX_WINDOW_S} s)"
    fi
else
    fail "app screenshot (see $OUT/app.txt)"; cat "$OUT/app.txt"
fi

say "== numbers"
bytes=$(du -sb "$APP" | cut -f1)
say "bundle: $APP $(awk -v b="$bytes" 'BEGIN { printf "%.2f GB (%d bytes)", b / 1e9, b }') (target <= 1.5 GB with CPU torch)"
if ls "$APP/_internal/torch/lib/" | grep -q "libtorch_cuda"; then
    say "note: this bundle holds CUDA torch; the size target is for the CPU build"
elif [ "$bytes" -gt "$MAX_BYTES" ]; then
    fail "bundle is larger than 1.5 GB"
fi
for tarball in "$ROOT"/build/installer/lvlm-studio-*.tar.gz; do
    [ -f "$tarball" ] && say "tarball: $tarball $(du -sb "$tarball" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
done
TIMES=$ROOT/build/installer/build-times.txt
if [ -f "$TIMES" ]; then
    say "build time: $(awk '$1 == "total" { t = $2 } $1 != "total" { s = s sprintf("%s %ss, ", $1, $2) } END { printf "%d s (%s)", t, substr(s, 1, length(s) - 2) }' "$TIMES")"
fi

say "smoke: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
