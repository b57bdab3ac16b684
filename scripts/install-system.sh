#!/usr/bin/env bash
# Debian packages the project runs: espeak-ng (the embedded engine), Redis, the Pushgateway and
# Prometheus (promtool too), sox and libsndfile. Installs only what is missing.
set -euo pipefail
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v sox >/dev/null || need+=(sox)
# Validates compose/docker-compose.yml in the tests (no Docker engine needed).
command -v docker-compose >/dev/null || need+=(docker-compose)
ldconfig -p 2>/dev/null | grep -q libsndfile || need+=(libsndfile1)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]} == 0)); then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
  $(printf '%s\n' "${need[@]}" | sort -u)
