#!/usr/bin/env bash
# Debian packages with the images the offline model is trained and calibrated on (needs root + apt-get):
#   openclipart-png    public-domain clip art (training images; ~130 MB)
#   gnome-backgrounds, mate-backgrounds   wallpaper photos and artwork (image-threshold calibration; ~80 MB)
# scikit-image (installed by scripts/setup.sh with the dev extra) provides the named sample photos.
set -euo pipefail
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != "0" ]; then
  echo "error: needs root and apt-get; install openclipart-png gnome-backgrounds mate-backgrounds yourself" >&2
  exit 2
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openclipart-png gnome-backgrounds mate-backgrounds >/dev/null
echo "image data installed: /usr/share/openclipart/png, /usr/share/backgrounds"
