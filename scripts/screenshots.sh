#!/usr/bin/env bash
# Refreshes docs/screenshots/ (login, overview, devices, device, account, admin and the customer's
# meter view; desktop and 360 px phone): runs the dashboard's browser test, which fills a
# throwaway server and, with WATTLINE_SCREENSHOTS set,
# photographs the pages after its checks pass. Needs node, npm and /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
WATTLINE_SCREENSHOTS=1 cargo test -p wattline --test it -- ui::dashboard_in_headless_chromium --exact --nocapture
ls -l docs/screenshots/
