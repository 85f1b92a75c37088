# shellcheck shell=bash
# Sourced by scripts/dev and scripts/test: make sure ./.venv exists with a
# Python >= 3.11, on a fresh machine too (installs Debian's python3-venv when
# ensurepip is missing and we are root). Sets $PY to the venv's python.

find_python() {
  for candidate in "${NOMAN_PYTHON_BIN:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_venv() {
  local venv=${NOMAN_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    local python
    if ! python=$(find_python); then
      echo "Noman needs Python 3.11 or newer (python3 --version)." >&2
      exit 1
    fi
    if ! "$python" -m venv "$venv" 2>/dev/null; then
      rm -rf "$venv"
      if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing python3-venv (ensurepip is missing)..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$venv"
      else
        echo "Cannot create a virtualenv: install your distribution's python3-venv." >&2
        exit 1
      fi
    fi
  fi
  PY="$venv/bin/python"
  "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
}
