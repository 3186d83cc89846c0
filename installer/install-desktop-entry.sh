#!/bin/sh
# Add LVLM Studio to the desktop's application menu (for this user): the desktop entry, pointing at
# this folder's lvlm-studio, and the icon. Run it from the unpacked folder; run it again after moving
# the folder. Nothing outside ~/.local/share is touched.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
mkdir -p "$DATA/applications" "$DATA/icons/hicolor/256x256/apps"
cp "$HERE/lvlm-studio.png" "$DATA/icons/hicolor/256x256/apps/lvlm-studio.png"
sed "s|^Exec=lvlm-studio|Exec=\"$HERE/lvlm-studio\"|" "$HERE/lvlm-studio.desktop" > "$DATA/applications/lvlm-studio.desktop"
echo "added $DATA/applications/lvlm-studio.desktop (LVLM Studio in the application menu)"
