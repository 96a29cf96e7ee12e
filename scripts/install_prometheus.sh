#!/usr/bin/env bash
# tests/system/test_prometheus.py scrapes a testnet with a real Prometheus server: Debian's
# package, installed once by `make test` (skipped when it is on PATH already, or without root and
# apt-get, and then that test skips, saying why), with service starts refused for the install, so
# no system-wide Prometheus is left running.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    || echo "install_prometheus.sh: could not install prometheus; tests/system/test_prometheus.py will skip" >&2
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
fi

