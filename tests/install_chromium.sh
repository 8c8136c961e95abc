#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for tests/test_report.py's rendering test. Installed only when missing,
# and only where apt-get can run as root; otherwise that one test is skipped and says why.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "chromium not installed (needs apt-get as root): the browser test of the report will be skipped"
    exit 0
fi
echo "installing Debian's chromium and chromium-driver for the report's browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
    || echo "chromium could not be installed: the browser test of the report will be skipped"
exit 0
