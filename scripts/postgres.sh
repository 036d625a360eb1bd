#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster (installed but not running) and make sure the
# test role exists. Prints `export CLEANROOM_TEST_POSTGRES_URL=...` for eval. Idempotent.
set -euo pipefail

ROLE=${CLEANROOM_PG_ROLE:-cleanroom}
PASSWORD=${CLEANROOM_PG_PASSWORD:-cleanroom}
PORT=${CLEANROOM_PG_PORT:-5432}

if ! ls /etc/postgresql >/dev/null 2>&1; then
  echo "error: PostgreSQL is not installed (run scripts/system-deps.sh)" >&2
  exit 1
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)

as_postgres() {
  # From / : the postgres user may not be able to enter the current folder.
  if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres "$@"); fi
}

if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
  else
    sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2
  fi
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { echo "error: PostgreSQL did not start" >&2; exit 1; }

exists=$(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")
if [[ "$exists" != "1" ]]; then
  as_postgres psql -p "$PORT" -q -c "CREATE ROLE \"$ROLE\" LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
echo "export CLEANROOM_TEST_POSTGRES_URL=postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres"
