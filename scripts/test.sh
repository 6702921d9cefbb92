#!/usr/bin/env bash
# Set up, then run the test suite against a real Redis (the local one on 6379, or one started here) and a real
# MQTT broker (the local one on 1883, or a Mosquitto started here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
PY="${VIGIL_VENV:-.venv}/bin/python"
# Generated test media (looped and captioned footage, the tiny tokenizer, downloaded sample videos) are kept
# per user, outside the checkout, so a new clone (and CI on this machine) reuses them; every file is keyed by
# what made it. VIGIL_TEST_CACHE=$(mktemp -d) runs from nothing.
export VIGIL_TEST_CACHE="${VIGIL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil/tests}"

started=""
if ! "$PY" -c "import redis,sys; redis.Redis(socket_connect_timeout=0.5).ping()" 2>/dev/null; then
  dir=$(mktemp -d)
  redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 50); do [ -s "$dir/redis.pid" ] && break; sleep 0.1; done
  started=$(cat "$dir/redis.pid")
  echo "test: started redis-server on 127.0.0.1:6379 (pid $started)" >&2
fi
# a real MQTT broker for the alert tests: the local one on 1883, or a Mosquitto started here
mqtt_started=""
if ! "$PY" -c "import socket; socket.create_connection(('127.0.0.1', 1883), 0.5).close()" 2>/dev/null; then
  mdir=$(mktemp -d)
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$mdir/mosquitto.conf"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$mdir/mosquitto.conf" >"$mdir/mosquitto.log" 2>&1 &
  mqtt_started=$!
  for _ in $(seq 50); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1', 1883), 0.5).close()" 2>/dev/null && break
    sleep 0.1
  done
  echo "test: started mosquitto on 127.0.0.1:1883 (pid $mqtt_started)" >&2
fi
cleanup() {
  if [ -n "$started" ]; then kill "$started" 2>/dev/null || true; fi
  if [ -n "$mqtt_started" ]; then kill "$mqtt_started" 2>/dev/null || true; fi
}
trap cleanup EXIT

# pytest exits 5 when it collects no test: that fails this script like any other failure.
# Three workers (VIGIL_TEST_WORKERS; 0: one process), a file's tests on one worker (its module fixtures shared):
# most tests wait on processes, sockets and stalls, so three overlap well even on two cores (5.8 min against 6.9 with two).
workers="${VIGIL_TEST_WORKERS:-3}"
if [ "$workers" = 0 ]; then
  "$PY" -m pytest -q --durations=20 "$@"
else
  "$PY" -m pytest -q -n "$workers" --dist loadfile --durations=20 "$@"
fi
