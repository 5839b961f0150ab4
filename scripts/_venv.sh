# The virtualenv in .venv that scripts/install and scripts/serve share (sourced, not run, with REPO
# set to the checkout's top). POSIX sh, so that scripts/serve also runs where bash is not installed
# (Alpine-based Python images).
#
# Made once with "${PYTHON:-python3} -m venv" and reused; asyncgate is installed into it (editable,
# so a `git pull` of the code needs nothing more) only when pyproject.toml has changed since the
# last install, or when more extras are wanted than that install had. A virtualenv rather than
# `pip install --user` or the system site: Debian, Ubuntu and Homebrew mark their Python
# externally managed (PEP 668), and pip refuses to install there.

# Where the virtualenv lives, and the stamp of the last install that completed in it:
# "<sha256 of pyproject.toml> <extras>".
VENV="$REPO/.venv"
STAMP="$VENV/.asyncgate-install"

# One line on stderr, exit status 2: what is missing and how to get it.
venv_fail() {
  echo "$0: $1" >&2
  exit 2
}

# Make .venv unless a working one is there already.
venv_ensure() {
  if "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    return
  fi
  local python=${PYTHON:-python3} version
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    venv_fail "$python not found (or it does not run): install Python 3.11 or later, or set PYTHON"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    venv_fail "asyncgate needs Python 3.11 or later, and $python is $version: set PYTHON to a newer one"
  # Debian and Ubuntu leave ensurepip out of python3 (it is in python3-venv), and `python3 -m venv`
  # then fails halfway, leaving a virtualenv without pip.
  "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
    venv_fail "$python cannot make a virtualenv: install python3-venv (sudo apt-get install python3-venv)"
  "$python" -m venv --clear "$VENV"
  # The pip a virtualenv starts with is the one bundled with the interpreter, often years old.
  "$VENV/bin/python" -m pip install -q --upgrade pip
}

# Install asyncgate with the given extras ("test,dev", or "" for just the package) unless the
# last install was of this pyproject.toml with the same extras (any extras will do for "").
venv_install() {
  local extras=$1 digest have_digest="" have_extras=""
  digest=$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
    "$REPO/pyproject.toml")
  if [ -f "$STAMP" ]; then
    read -r have_digest have_extras <"$STAMP" || true
  fi
  if [ "$have_digest" = "$digest" ] && { [ -z "$extras" ] || [ "$have_extras" = "$extras" ]; }; then
    return
  fi
  echo "$0: installing asyncgate${extras:+[$extras]} into .venv (again only when pyproject.toml changes)" >&2
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q -e "$REPO${extras:+[$extras]}"
  echo "$digest $extras" >"$STAMP"
}
