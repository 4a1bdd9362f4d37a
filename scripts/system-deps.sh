#!/usr/bin/env bash
# Installs the Debian packages for headless MuJoCo rendering (EGL via Mesa llvmpipe, OSMesa as
# fallback) when they are missing. Called by `make setup` and `.ci/run`; a no-op when present.
set -euo pipefail
PKGS="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "lompo-bench needs these Debian packages for headless rendering:$missing" >&2
  echo "install them with: sudo apt-get install -y$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
