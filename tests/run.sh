#!/usr/bin/env bash
# The project's test command (the README gives it): a fresh virtualenv, the package with its test
# extra, lint, format and type checks, then the whole test suite. Under CI (CI=true) it also starts
# the single-node SLURM cluster first, so the SLURM tests run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

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
