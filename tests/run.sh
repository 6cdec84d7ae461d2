#!/usr/bin/env bash
# The project's test command (the README gives it): a fresh virtualenv, the package with its test
# extra, lint, format and type checks, then the whole test suite. Under CI (CI=true) it also starts
# the single-node SLURM cluster first, so the SLURM tests run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# the real-filesystem tests (tests/fsmounts.py) mount FUSE and bind mounts: Debian's bindfs, fuse3
# (fusermount3), libfuse3-dev + pkg-config + gcc (to build tests/fuse_nolock.c). Installed here when
# missing and root; otherwise those tests skip, except under CI=true where they fail.
missing=()
command -v bindfs >/dev/null 2>&1 || missing+=(bindfs)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if ! command -v pkg-config >/dev/null 2>&1; then
  missing+=(pkg-config libfuse3-dev)
elif ! pkg-config --exists fuse3; then
  missing+=(libfuse3-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_log="$(mktemp)"
    apt_install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; }
    # a fresh machine may have no package lists yet: update once, then retry
    if ! apt_install && ! { apt-get update -qq >>"$apt_log" 2>&1 && apt_install; }; then
      cat "$apt_log"
      echo "!! could not install ${missing[*]}: the filesystem tests will skip (fail under CI=true)"
    fi
    rm -f "$apt_log"
  else
    echo "!! missing ${missing[*]} (needs root + apt-get): the filesystem tests will skip" \
      "(fail under CI=true)"
  fi
fi

venv="${EXCA_LITE_TEST_VENV:-.test-venv}"
echo "== fresh virtualenv in $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test]"

echo "== ruff, mypy"
"$venv/bin/ruff" check exca_lite tests benchmarks
"$venv/bin/ruff" format --check exca_lite tests benchmarks
"$venv/bin/mypy" --strict exca_lite

if [ "${CI:-}" = "true" ]; then
  echo "== SLURM cluster"
  bash tests/slurm/cluster.sh start
fi

echo "== pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
