# Sourced (`. scripts/ensure-postgres.sh`) by bench.sh, run.sh and test.sh; can also be run.
# Makes sure PostgreSQL's server binaries are installed: when neither `pg_config` nor
# /usr/lib/postgresql/*/bin/initdb exists, installs Debian's `postgresql` package.
# Defines no functions or variables; on failure it prints why and exits non-zero.

if ! command -v pg_config >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "PostgreSQL binaries not found; installing the Debian package postgresql" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: PostgreSQL is not installed and apt-get is not available; install PostgreSQL 15 (server binaries: initdb, pg_ctl, postgres, pg_recvlogical)" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    fi || {
        echo "error: installing PostgreSQL with apt-get failed; install the postgresql package by hand" >&2
        exit 1
    }
    if ! command -v pg_config >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        echo "error: the postgresql package was installed but neither pg_config nor /usr/lib/postgresql/*/bin/initdb was found" >&2
        exit 1
    fi
fi
