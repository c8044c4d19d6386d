#!/bin/bash
# The etcd reference: three etcd members and three `spore node` processes on loopback, measured
# alike and alternated, on this machine.
#   benches/etcd_reference/run.sh [rounds]      (default 3)
# Installs etcd and protoc from Debian's packages if they are missing (as root) and builds the
# etcd client here and the release `spore`. Each round starts three fresh etcd members (data
# under $TMPDIR, the disk the store's benches use), measures them (`etcd-reference`: 1 client's
# 2,000 writes, then 64 and 256 clients for 5 s, 512-byte values), stops them, then does the
# same with three fresh `spore node` processes and `spore bench` (512-byte registrations, each
# signed by the client and checked by every voter). Both clients talk to the leader over the
# network (etcd: gRPC over TCP; spore: QUIC) from a process of their own. Both connect every
# client before the clock starts and report the connections on their own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${1:-3}
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client protobuf-compiler >/dev/null
fi
(cd "$here" && cargo build --release --quiet)
(cd "$root" && cargo build --release --quiet -p mycnet-spores-tools --bin spore)
spore="$root/target/release/spore"
data=$(mktemp -d)
procs=()
stop() {
  for p in "${procs[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${procs[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  procs=()
}
trap 'stop; rm -rf "$data"' EXIT

etcd_round() {
  local cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
  local clients="http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$data/e$i" --log-level warn \
      --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
      --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token reference \
      >"$data/e$i.log" 2>&1 &
    procs+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="${clients//http:\/\//}" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$here/target/release/etcd-reference" "$clients" "$data"
  stop
}

spore_round() {
  local k0 k1 k2
  k0=$("$spore" keygen --data-dir "$data/n0")
  k1=$("$spore" keygen --data-dir "$data/n1")
  k2=$("$spore" keygen --data-dir "$data/n2")
  "$spore" node --data-dir "$data/n0" --listen 127.0.0.1:7400 --name n0 --init reference \
    --peer "$k1@127.0.0.1:7401" --peer "$k2@127.0.0.1:7402" >"$data/n0.log" 2>&1 &
  procs+=($!)
  "$spore" node --data-dir "$data/n1" --listen 127.0.0.1:7401 --name n1 --join-addr 127.0.0.1:7400 \
    --join-key "$k0" --peer "$k0@127.0.0.1:7400" --peer "$k2@127.0.0.1:7402" >"$data/n1.log" 2>&1 &
  procs+=($!)
  "$spore" node --data-dir "$data/n2" --listen 127.0.0.1:7402 --name n2 --join-addr 127.0.0.1:7400 \
    --join-key "$k0" --peer "$k0@127.0.0.1:7400" --peer "$k1@127.0.0.1:7401" >"$data/n2.log" 2>&1 &
  procs+=($!)
  for _ in $(seq 1 100); do
    [ "$("$spore" member list --addr 127.0.0.1:7400 --json 2>/dev/null | grep -o '"voter"' | wc -l)" -ge 3 ] && break
    sleep 0.3
  done
  echo "spore, 3 nodes on loopback, 512-byte registrations"
  local bench=("$spore" bench --addr 127.0.0.1:7400 --key-file "$data/n0/node.key" --size 512 --keep)
  # A failed write makes spore bench exit non-zero: the round goes on, its lines say so.
  { "${bench[@]}" --clients 1 --events 2000 2>&1 || true; } | grep -E "^(committed|latency|spore: error)" | sed 's/^/  1 client: /'
  for c in 64 256; do
    { "${bench[@]}" --clients "$c" --duration 5s 2>&1 || true; } | grep -E "^(connected|committed|latency|spore: error)" | sed "s/^/  $c clients: /"
  done
  stop
}

for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  rm -rf "${data:?}"/*
  etcd_round
  rm -rf "${data:?}"/*
  spore_round
done
