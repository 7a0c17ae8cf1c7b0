#!/usr/bin/env bash
# Reproduces the cluster figures of engine/CLUSTER.md ("Figures") on one machine:
#   p2p      - 3 local nodes, 1,000 pairs whose two users sit on different nodes
#              (ternbench p2p --cross-node), at full speed and offered 5,000 msg/s, then the
#              same two loads on one node;
#   failover - 3 local nodes, 5,000 connected clients, SIGKILL of node 3: time until every
#              client of node 3 is back (HELLO accepted by its new node, SYNC answered).
# Usage: tools/cluster-bench.sh [p2p|failover|all] [runs]   (default: all, 1 run each)
# Environment: TERN_BENCH_DIR (scratch dir, default a new temp dir), BASE (port base, default
# 15000), CORES (cores per cluster node, default 1), SINGLE_CORES (cores of the one-node run,
# default 2), PAIRS (1000), MESSAGES (200000), CLIENTS (5000), WORKERS (2), NO_BUILD (set: use
# the binaries already in $CARGO_TARGET_DIR/release).
# Every node this script starts is killed on exit (by its process id).
set -euo pipefail

what=${1:-all}
runs=${2:-1}
BASE=${BASE:-15000}
CORES=${CORES:-1}
SINGLE_CORES=${SINGLE_CORES:-2}
PAIRS=${PAIRS:-1000}
MESSAGES=${MESSAGES:-200000}
CLIENTS=${CLIENTS:-5000}
WORKERS=${WORKERS:-2}
J=tern-cluster-bench-jwt-secret
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace
BIN=$CARGO_TARGET_DIR/release
DIR=${TERN_BENCH_DIR:-$(mktemp -d /tmp/tern-cluster-bench.XXXXXX)}
mkdir -p "$DIR"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do { wait "$p"; } 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

# Waits (at most 30 s) until node $1's admin API lists $2 live members with quorum.
wait_members() {
  local admin=$1 want=$2
  for _ in $(seq 1 150); do
    if curl -sf "http://$admin/cluster/members" 2>/dev/null |
      grep -q "\"alive\":$want,.*\"writable\":true"; then
      return 0
    fi
    sleep 0.2
  done
  echo "node at $admin did not see $want members with quorum within 30 s" >&2
  curl -s "http://$admin/cluster/members" >&2 || true
  return 1
}

# Starts a fresh 3-node cluster: native on BASE+1..3, admin on BASE+101..103, gossip on
# BASE+201..203; data dirs under $DIR/$1-N.
start_cluster() {
  local tag=$1 join="127.0.0.1:$((BASE + 201)),127.0.0.1:$((BASE + 202)),127.0.0.1:$((BASE + 203))"
  for i in 1 2 3; do
    rm -rf "$DIR/$tag-$i"
    "$BIN/ternd" --dev --data-dir "$DIR/$tag-$i" --cores "$CORES" --jwt-secret "$J" \
      --native "127.0.0.1:$((BASE + i))" --tls off --http off --admin "127.0.0.1:$((BASE + 100 + i))" \
      --cluster "127.0.0.1:$((BASE + 200 + i))" --join "$join" --cluster-size 3 \
      >"$DIR/$tag-$i.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 1 2 3; do wait_members "127.0.0.1:$((BASE + 100 + i))" 3; done
}

start_single() {
  local tag=$1
  rm -rf "$DIR/$tag"
  "$BIN/ternd" --dev --data-dir "$DIR/$tag" --cores "$SINGLE_CORES" --jwt-secret "$J" \
    --native "127.0.0.1:$((BASE + 50))" --tls off --http off --admin "127.0.0.1:$((BASE + 150))" \
    >"$DIR/$tag.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$((BASE + 150))/healthz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "single node did not start" >&2
  return 1
}

bench() { "$BIN/ternbench" --secret "$J" --workers "$WORKERS" "$@"; }

quiet() { echo "# $(date -u +%FT%TZ) rustc processes: $(pgrep -c rustc || true), load: $(cut -d' ' -f1-3 /proc/loadavg)"; }

run_p2p() {
  for r in $(seq 1 "$runs"); do
    echo "## p2p run $r: 3 nodes ($CORES core(s) each), $PAIRS cross-node pairs"
    start_cluster p2p
    quiet
    bench --target "127.0.0.1:$((BASE + 1))" p2p --pairs "$PAIRS" --messages "$MESSAGES" \
      --admin "127.0.0.1:$((BASE + 101))" --cross-node
    quiet
    bench --target "127.0.0.1:$((BASE + 1))" p2p --pairs "$PAIRS" --messages 50000 --rate 5000 \
      --admin "127.0.0.1:$((BASE + 101))" --cross-node
    cleanup
    echo "## p2p run $r: one node ($SINGLE_CORES cores), $PAIRS pairs"
    start_single single
    quiet
    bench --target "127.0.0.1:$((BASE + 50))" p2p --pairs "$PAIRS" --messages "$MESSAGES"
    quiet
    bench --target "127.0.0.1:$((BASE + 50))" p2p --pairs "$PAIRS" --messages 50000 --rate 5000
    cleanup
  done
}

# Once with the SDK's reconnection backoff (100 ms doubling to 5 s, plus jitter), whose steps
# dominate the figure, and once with the backoff capped at 200 ms, which shows the cluster's own
# time (failure detection, then HELLO and SYNC at the new owner).
run_failover() {
  for r in $(seq 1 "$runs"); do
    for cap in 5000 200; do
      echo "## failover run $r: 3 nodes, $CLIENTS clients, SIGKILL of node 3, backoff cap $cap ms"
      start_cluster failover
      quiet
      bench --target "127.0.0.1:$((BASE + 1))" failover --clients "$CLIENTS" \
        --nodes "127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2)),127.0.0.1:$((BASE + 3))" \
        --victim "127.0.0.1:$((BASE + 3))" --kill-pid "${PIDS[2]}" --backoff-max-ms "$cap"
      cleanup
    done
  done
}

case $what in
  p2p) run_p2p ;;
  failover) run_failover ;;
  all) run_p2p; run_failover ;;
  *) echo "usage: $0 [p2p|failover|all] [runs]" >&2; exit 2 ;;
esac
echo "# logs and data: $DIR"
