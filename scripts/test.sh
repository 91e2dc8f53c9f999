#!/usr/bin/env bash
# Runs the whole test suite, after making sure what the tests need is on the machine:
#   - a PostgreSQL server: the one at $DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)
#     if it answers; otherwise Debian's postgresql package is installed if missing and a
#     throwaway cluster is started on a free port for this run;
#   - a NATS server (cluster tests): the one at $NATS_URL (default nats://127.0.0.1:4222) if
#     it answers; otherwise Debian's nats-server package is installed if missing and a
#     throwaway server is started on a free port for this run;
#   - an S3-compatible server (file storage tests): the one at $TEST_S3_ENDPOINT if it answers;
#     otherwise moto's standalone server (PyPI: moto[server]) is installed if missing (into a
#     virtualenv under target/ where pip may not install system-wide) and started on a free
#     port for this run;
#   - the nats-server binary (a cluster test restarts a NATS of its own), mosquitto_pub/
#     mosquitto_sub and openssl (interoperability and TLS tests);
#   - Node.js and npm (the JavaScript client's tests, clients/js), Debian's packages if
#     missing; its packages come from the committed lockfile (`npm ci`);
#   - Chromium (the web app's tests in a real browser, driven by playwright-core): the one at
#     $CHROMIUM, else /usr/bin/chromium, else Debian's chromium package is installed;
#   - schemathesis (PyPI), which tests the REST API against its OpenAPI document: the version
#     below, in a virtualenv under target/ (installed there once), passed to the tests as
#     $TEST_SCHEMATHESIS.
# Tests never skip for want of a service: if one cannot be had, they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# What to undo on exit (throwaway servers), run in order.
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT

missing=()
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v psql >/dev/null || missing+=(postgresql-client)
# A readiness test stops and starts a PostgreSQL server of its own (initdb, pg_ctl).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || { CHROMIUM=/usr/bin/chromium; [ -x "$CHROMIUM" ] || missing+=(chromium); }
# The cluster tests also start throwaway NATS servers of their own (a NATS restart).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
[ ${#missing[@]} -eq 0 ] || { echo "installing ${missing[*]}"; apt_install "${missing[@]}"; }

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
if psql "$DATABASE_URL" -qtAc 'select 1' >/dev/null 2>&1; then
    echo "using PostgreSQL at ${DATABASE_URL%%\?*}"
else
    echo "no PostgreSQL answers at $DATABASE_URL; starting a throwaway cluster"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
    bin="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
    dir="$(mktemp -d /tmp/chatd-pg.XXXXXX)"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    run_as=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        run_as=(runuser -u postgres --)
    fi
    "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
    "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
    cleanup+=('"${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir"')
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi

export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
nats_hostport="${NATS_URL#*://}"; nats_hostport="${nats_hostport##*@}"; nats_hostport="${nats_hostport%%/*}"
# A NATS server greets every connection with INFO.
if timeout 2 bash -c "exec 3<>/dev/tcp/${nats_hostport%:*}/${nats_hostport##*:}; head -c 4 <&3" 2>/dev/null | grep -q INFO; then
    echo "using NATS at $NATS_URL"
else
    echo "no NATS answers at $NATS_URL; starting a throwaway server"
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
    nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
    nats_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    nats_log="$(mktemp /tmp/chatd-nats.XXXXXX)"
    "$nats_bin" -a 127.0.0.1 -p "$nats_port" >"$nats_log" 2>&1 &
    nats_pid=$!
    cleanup+=('kill "$nats_pid" 2>/dev/null; rm -f "$nats_log"')
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
    export NATS_URL="nats://127.0.0.1:$nats_port"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ -n "${TEST_S3_ENDPOINT:-}" ] && curl -s -o /dev/null "$TEST_S3_ENDPOINT"; then
    echo "using the S3 server at $TEST_S3_ENDPOINT"
else
    echo "starting a throwaway S3 server (moto)"
    moto=(python3 -m moto.server)
    if ! python3 -c 'import moto.server' 2>/dev/null; then
        if ! python3 -m pip install --quiet 'moto[server]' >/dev/null 2>&1; then
            # pip may not install system-wide (PEP 668): a virtualenv of our own instead.
            venv="${CARGO_TARGET_DIR:-target}/moto-venv"
            [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >/dev/null 2>&1 \
                || { apt_install python3-venv python3-pip; python3 -m venv "$venv"; }
            "$venv/bin/python" -c 'import moto.server' 2>/dev/null || "$venv/bin/pip" install --quiet 'moto[server]'
            moto=("$venv/bin/python" -m moto.server)
        fi
    fi
    s3_port="$(free_port)"
    s3_log="$(mktemp /tmp/chatd-s3.XXXXXX)"
    "${moto[@]}" -H 127.0.0.1 -p "$s3_port" >"$s3_log" 2>&1 &
    s3_pid=$!
    cleanup+=('kill "$s3_pid" 2>/dev/null; rm -f "$s3_log"')
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$s3_port" && break; sleep 0.1; done
    curl -s -o /dev/null "http://127.0.0.1:$s3_port" || { echo "the S3 server did not start:"; cat "$s3_log"; exit 1; }
    export TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
fi

# schemathesis, pinned: a newer release may add checks of its own.
schemathesis_version=4.32.5
st_venv="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis-venv"
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
    echo "installing schemathesis $schemathesis_version into $st_venv"
    python3 -m venv "$st_venv" >/dev/null 2>&1 || { apt_install python3-venv python3-pip; python3 -m venv "$st_venv"; }
    "$st_venv/bin/pip" install --quiet "schemathesis==$schemathesis_version"
fi
export TEST_SCHEMATHESIS="$st_venv/bin/schemathesis"

cargo test --workspace --all-targets "$@"

# The JavaScript client (clients/js) and the web app (web/, in Chromium) against the chatd
# binary just built. The web app's copy of the SDK (web/chatd.js, compiled into chatd) must
# be what the SDK's source bundles to: a stale copy fails here.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
(
    cd clients/js
    npm ci --no-audit --no-fund --loglevel=error
    npm run --silent bundle -- --log-level=warning --outfile="$target_dir/chatd-bundle-check.js"
    cmp -s "$target_dir/chatd-bundle-check.js" ../../web/chatd.js \
        || { echo "web/chatd.js is stale: run 'npm run bundle' in clients/js and commit it"; exit 1; }
    CHATD_BIN="$target_dir/debug/chatd" npm test
)
