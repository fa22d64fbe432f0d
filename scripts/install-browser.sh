#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its WebDriver (chromedriver) for the browser
# tests of the HTML report (tests/report_browser.rs). Idempotent: does nothing when both are on
# PATH. Prints chromium's path on stdout (progress goes to stderr), so that
#     scripts/install-browser.sh >/dev/null
# in CI is enough, and the tests find `chromium` and `chromedriver` on PATH.
#
# Why Debian's packages: the tests must not download a browser (no network but the package
# registries), and the distribution's chromium and chromium-driver are built together, so the
# driver always matches the browser.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  command -v chromium
  exit 0
fi

sudo=""
if [[ "$(id -u)" != 0 ]]; then
  sudo="sudo"
fi
echo "install-browser: apt-get install chromium chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
command -v chromium
