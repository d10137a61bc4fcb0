#!/usr/bin/env bash
# aria2c <- berth over the BitTorrent peer protocol (librqbit seeding from the blob file,
# peer-only torrent via a local opentracker) vs aria2c <- berth web seed (BEP 19, no tracker)
# vs curl of /v2/, same node, same 256 MiB layer, loopback, warm page cache. 3 runs each.
# Usage: BERTH=target/release/berth docs/bench/bittorrent-seed.sh [size_mib]
set -euo pipefail
BERTH=${BERTH:-${CARGO_TARGET_DIR:-target}/release/berth}
MIB=${1:-256}
W=$(mktemp -d)
NODE=; TRACKER=
cleanup() { [ -n "$NODE" ] && kill "$NODE" 2>/dev/null; [ -n "$TRACKER" ] && kill "$TRACKER" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
HP=$(port); TP=$(port); BP=$(port)
wait_http() { for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
head -c "${MIB}M" /dev/urandom > "$W/layer"
DIGEST=sha256:$(sha256sum "$W/layer" | cut -d' ' -f1)
ANN=http://127.0.0.1:$TP/announce
"$BERTH" serve --listen 127.0.0.1:$HP --data-dir "$W/data" --torrent-announce "$ANN" 2>"$W/node1.log" & NODE=$!
wait_http http://127.0.0.1:$HP/healthz
curl -sf -X POST --data-binary @"$W/layer" -H 'Content-Type: application/octet-stream' \
  "http://127.0.0.1:$HP/v2/bench/layer/blobs/uploads/?digest=$DIGEST" >/dev/null
curl -sf -o "$W/full.torrent" "http://127.0.0.1:$HP/berth/v1/torrent/bench/layer/blobs/$DIGEST"
kill "$NODE"; wait "$NODE" || true; NODE=
python3 - "$W" <<'PY'
import sys, re
w = sys.argv[1]; t = open(w + "/full.torrent", "rb").read()
open(w + "/peer.torrent", "wb").write(t[:t.index(b"8:url-list")] + b"e")   # no web seed
m = re.match(rb"d8:announce(\d+):", t); n = int(m.group(1))
open(w + "/web.torrent", "wb").write(b"d" + t[m.end() + n:])              # no tracker
PY
HASH=$(aria2c -S "$W/peer.torrent" | sed -n 's/^Info Hash: //p')
mkdir -p "$W/tracker"; chmod 755 "$W/tracker"; echo "$HASH" > "$W/tracker/whitelist"
opentracker -i 127.0.0.1 -p $TP -P $TP -d "$W/tracker" -w whitelist >/dev/null 2>&1 & TRACKER=$!
"$BERTH" serve --listen 127.0.0.1:$HP --data-dir "$W/data" --torrent-announce "$ANN" \
  --seed --bittorrent-listen 127.0.0.1:$BP 2>"$W/node2.log" & NODE=$!
wait_http http://127.0.0.1:$HP/healthz
ESC=$(echo "$HASH" | sed 's/../%&/g')
for _ in $(seq 300); do
  curl -s "http://127.0.0.1:$TP/scrape?info_hash=$ESC" | grep -aq '8:completei[1-9]' && break; sleep 0.2
done
ARIA="aria2c --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false \
  --seed-time=0 --console-log-level=error --summary-interval=0 --allow-overwrite=true --file-allocation=none"
bytes=$((MIB * 1048576))
measure() {  # name, command...
  local name=$1; shift
  for run in 1 2 3; do
    rm -rf "$W/out"; mkdir -p "$W/out"
    local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    local got; got=sha256:$(sha256sum "$W/out/"* | cut -d' ' -f1)
    [ "$got" = "$DIGEST" ] || { echo "$name: wrong bytes" >&2; exit 1; }
    awk -v n="$name" -v r=$run -v b=$bytes -v a="$t0" -v z="$t1" \
      'BEGIN { printf "%-28s run %d  %6.2f s  %7.1f MB/s\n", n, r, z - a, b / (z - a) / 1e6 }'
  done
}
measure "aria2c <- berth BitTorrent" $ARIA --dir="$W/out" "$W/peer.torrent"
measure "aria2c <- berth web seed" $ARIA --dir="$W/out" "$W/web.torrent"
measure "curl <- berth /v2/" curl -sf -o "$W/out/layer" "http://127.0.0.1:$HP/v2/bench/layer/blobs/$DIGEST"
