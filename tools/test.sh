#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Usage: bash tools/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# OpenCL runtime for the opencl backend (PoCL on the CPU): apt only as root and only when
# missing; without it the opencl tests skip with the reason. NOTE: pyopencl's PyPI "pocl"
# extra does not run on every CPU, so the ICD comes from Debian.
OCL_PKGS="pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev clinfo"
# Vulkan for the vulkan backend: the loader, Mesa's lavapipe, glslc, spirv-val (and the headers its binding test reads)
VK_PKGS="libvulkan1 mesa-vulkan-drivers glslc spirv-tools libvulkan-dev"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
    missing=$(for p in $OCL_PKGS $VK_PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
    if [ -n "$missing" ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1 \
            || echo "tools/test.sh: could not install$(echo " $missing" | tr '\n' ' '); the opencl/vulkan tests will skip" >&2
    fi
fi
# Headless Chromium and Graphviz for `graphir view` and its browser test (Debian's chromium driven by
# Playwright with executablePath /usr/bin/chromium: no browser download): apt only as root and only
# when missing; without them the view tests skip with the reason.
VIEW_PKGS="chromium graphviz"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
    missing=$(for p in $VIEW_PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
    if [ -n "$missing" ]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1 \
            || echo "tools/test.sh: could not install$(echo " $missing" | tr '\n' ' '); the view tests will skip" >&2
    fi
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
if command -v chromium >/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check playwright \
        || echo "tools/test.sh: playwright could not be installed; the view browser test will skip" >&2
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,opencl]" \
    || echo "tools/test.sh: pyopencl could not be installed; the opencl tests will skip" >&2
export GRAPHIR_HYPOTHESIS_PROFILE=${GRAPHIR_HYPOTHESIS_PROFILE:-ci}
exec "$PY" -m pytest -q "$@"
