#!/usr/bin/env bash
# Monolithic 256 MiB pushes with curl as the client (the lightest one there is: `curl -T`
# streams a file from tmpfs), berth and Debian's docker-registry interleaved, each push a
# distinct blob (a repeated one would be deduplicated and skip the fsync).
# Usage: loadtest/bench/push-curl.sh [PUSHES=8]     (needs: docker-registry curl)
set -euo pipefail
T=${CARGO_TARGET_DIR:-$HOME/.cache/berth-target}/release
N=${1:-8}; SIZE=$((256 << 20))
WORK=$(mktemp -d); FILES=$(mktemp -d /dev/shm/push-curl.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$WORK" "$FILES"' EXIT
cat > "$WORK/dr.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/dr-data}}
http: {addr: 127.0.0.1:5111}
YML
docker-registry serve "$WORK/dr.yml" 2>"$WORK/dr.log" &
BERTH_LOG=warn "$T/berth" serve --listen 127.0.0.1:5112 --data-dir "$WORK/berth-data" 2>"$WORK/berth.log" &
for i in $(seq "$N"); do head -c $SIZE /dev/urandom > "$FILES/$i"; sha256sum "$FILES/$i" | cut -d' ' -f1 > "$FILES/$i.d"; done
sleep 1
# push PORT REPO FILE: POST an upload session, then PUT the whole file with ?digest=.
push() {
  local loc sep
  loc=$(curl -sf -D - -o /dev/null -X POST "http://127.0.0.1:$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  [[ $loc == http* ]] || loc="http://127.0.0.1:$1$loc"
  sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -sf -o /dev/null -w '%{time_total}\n' -T "$3" -H 'content-type: application/octet-stream' "$loc${sep}digest=sha256:$(cat "$3.d")"
}
echo "# $(date -u +%FT%TZ) $(nproc) cores, $N pushes of $SIZE bytes each, interleaved"
for i in $(seq "$N"); do
  echo "push $i docker-registry $(push 5111 c/r$i "$FILES/$i") berth $(push 5112 c/r$i "$FILES/$i")"
done | tee "$WORK/times"
median() { sort -g | sed -n "$((($N + 1) / 2))p"; }
dr=$(awk '{print $4}' "$WORK/times" | median); b=$(awk '{print $6}' "$WORK/times" | median)
awk -v dr="$dr" -v b="$b" -v s=$SIZE 'BEGIN { printf "median s per push: docker-registry %.3f (%.0f MB/s), berth %.3f (%.0f MB/s), berth ÷ docker-registry %.2f×\n", dr, s/dr/1e6, b, s/b/1e6, dr/b }'
