# shellcheck shell=bash
# Sourced by scripts/dev and scripts/test: make sure ./.venv exists with a
# Python >= 3.11, on a fresh machine too (installs Debian's python3-venv when
# ensurepip is missing and we are root), and that Noman is installed in it.
# Sets $PY to the venv's python. Says one line per step on stderr; pip's own
# output (and its warnings) goes to $venv/noman-install.log.
#
# A second start needs no package index: Noman is installed in editable mode,
# so code changes need no reinstall, and the dependencies are reinstalled only
# when pyproject.toml or requirements.lock changed since the last install (a
# stamp with their hash is kept in the venv).

venv_say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

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
  VENV=${NOMAN_VENV:-.venv}
  INSTALL_LOG="$VENV/noman-install.log"
  if [ ! -x "$VENV/bin/python" ]; then
    local python
    if ! python=$(find_python); then
      echo "Noman needs Python 3.11 or newer (python3 --version)." >&2
      exit 1
    fi
    venv_say "creating $VENV with $("$python" --version 2>&1)"
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        venv_say "installing Debian's python3-venv (ensurepip is missing)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$VENV"
      else
        echo "Cannot create a virtualenv: install your distribution's python3-venv." >&2
        exit 1
      fi
    fi
    venv_say "upgrading pip in $VENV"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip \
      >"$INSTALL_LOG" 2>&1; then
      venv_say "pip upgrade failed (carrying on with the venv's pip); see $INSTALL_LOG"
    fi
  fi
  PY="$VENV/bin/python"
}

# install_noman SPEC: `pip install -e SPEC` (SPEC is . or .[test]) unless the
# same SPEC, or one that includes it, was installed from the same
# pyproject.toml and requirements.lock (delete $VENV/.noman-installed* to
# force a reinstall).
install_noman() {
  local spec=$1 digest stamp
  digest=$(cat pyproject.toml requirements.lock 2>/dev/null | sha256sum | cut -d' ' -f1)
  # .[test] includes ., so its stamp serves both.
  for stamp in "$VENV/.noman-installed${spec#.}" "$VENV/.noman-installed[test]"; do
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
      venv_say "Noman is installed and pyproject.toml/requirements.lock are unchanged: not reinstalling"
      return 0
    fi
  done
  venv_say "installing Noman ($spec) and its dependencies into $VENV (log: $INSTALL_LOG)"
  if ! "$PY" -m pip install --disable-pip-version-check --no-input -e "$spec" \
    >>"$INSTALL_LOG" 2>&1; then
    tail -n 25 "$INSTALL_LOG" >&2
    venv_say "installing Noman failed; the whole pip output is in $INSTALL_LOG"
    exit 1
  fi
  echo "$digest" >"$VENV/.noman-installed${spec#.}"
}
