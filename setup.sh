#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with the pinned set (requirements.lock),
# the project installed editable with its `v2m` command, and an ffmpeg program (from the
# imageio-ffmpeg wheel) linked into .venv/bin, and Debian's chromium for the report test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup.sh: needs Python 3.11 (the local torch 2.14.1 wheels are cp311); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
# torch and its matched torchvision first (local files: a CUDA build that also runs on the CPU), so nothing
# later pulls another torch that torchvision or open_clip_torch would not load beside.
"${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" install -q -c requirements.lock -e ".[dev]"
# yt-dlp, and anyone at a shell, expect an `ffmpeg` program: use the one the wheel ships.
ln -sf "$(.venv/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" .venv/bin/ffmpeg
for bad in torchaudio audiocraft; do
    if .venv/bin/python -m pip show -q "$bad" >/dev/null 2>&1; then
        echo "setup.sh: $bad got installed; it does not work with this torch (README: your stack)" >&2
        exit 1
    fi
done
# The report test opens the HTML report in a real browser: Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing Debian's chromium (for the HTML report test)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    else
        echo "setup.sh: no chromium; install Debian's 'chromium' package (as root) for the report test" >&2
    fi
fi
.venv/bin/v2m doctor
