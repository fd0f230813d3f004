#!/usr/bin/env bash
# Installs the real servers the test suite starts on loopback, and the image build tools (Debian packages).
# Safe to run again: it installs only what is missing.
set -euo pipefail
need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || need+=(influxdb)
# tests/test_dockerfile.py: build the image (buildah), make its python base (debootstrap), run it (runc)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "install-test-deps: apt-get install ${need[*]}"
  apt-get update -qq
  # policy-rc.d keeps apt from starting the system services: the tests start their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the packages start system-wide daemons on some images; the tests use their own, so stop them
  (service mariadb stop || service influxdb stop) >/dev/null 2>&1 || true
fi
