#!/usr/bin/env bash
# Headless Chromium and ChromeDriver for tests/test_report.py, from Debian's packages.
# Idempotent: returns at once when both are installed. Needs root (or sudo) only the first time.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo_cmd=""
if [[ "$(id -u)" != "0" ]]; then
  command -v sudo >/dev/null || { echo "[browser] chromium + chromium-driver missing and not root: install them" >&2; exit 1; }
  sudo_cmd="sudo"
fi
echo "[browser] installing Debian chromium + chromium-driver"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
echo "[browser] $(chromium --version)"
