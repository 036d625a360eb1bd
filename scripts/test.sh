#!/usr/bin/env bash
# Run the whole suite: lint, then pytest on SQLite and PostgreSQL. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [[ -z "${CLEANROOM_TEST_POSTGRES_URL:-}" ]]; then
  eval "$(bash scripts/postgres.sh)"
fi
export CLEANROOM_TEST_POSTGRES_URL

echo "lint: ruff check, ruff format --check, mypy"
"$VENV/bin/ruff" check hub anonymisation policies sandbox contracts tests benchmarks
"$VENV/bin/ruff" format --check hub anonymisation policies sandbox contracts tests benchmarks
"$VENV/bin/mypy"

echo "tests: pytest (database tests on SQLite and PostgreSQL)"
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
fi
exit $status
