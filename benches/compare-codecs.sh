#!/usr/bin/env bash
# Side-by-side: berth-transcoder vs `zstd -T0` and `pigz` on the same layer-like tar, same
# machine, same run (issue 6). Medians of RUNS wall-clock runs, file -> file, warm cache.
#   benches/compare-codecs.sh [SIZE_MIB=64] [RUNS=3]
# berth's numbers include what the registry does in the same pass (sha256 of the
# uncompressed stream and of the output); the command-line tools hash nothing.
set -euo pipefail
size_mib=${1:-64}
runs=${2:-3}
cd "$(dirname "$0")/.."
for tool in zstd pigz gzip; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y zstd pigz)" >&2; exit 1; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/berth-target}
cargo build --quiet --release -p berth-benches --example codec
codec=$CARGO_TARGET_DIR/release/examples/codec
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$codec" gen "$work/layer.tar" "$size_mib"
gzip -6 -c "$work/layer.tar" >"$work/layer.tar.gz"     # one member, like docker/Go push
zstd -q -3 -c "$work/layer.tar" >"$work/layer.tar.zst"
tar_bytes=$(stat -c %s "$work/layer.tar")

# median_seconds CMD...: median wall time of $runs runs of `sh -c CMD`.
median_seconds() {
    local times=()
    for _ in $(seq "$runs"); do
        local t0 t1
        t0=$(date +%s.%N)
        sh -c "$1" >/dev/null
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc -l)")
    done
    printf '%s\n' "${times[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p"
}

w=$work
printf '%s\n' "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%s\n' "date: $(date -u +%F), input: $tar_bytes bytes tar ($(stat -c %s $w/layer.tar.gz) gzip -6, $(stat -c %s $w/layer.tar.zst) zstd -3)"
printf '| conversion | berth s | berth MB/s | reference | ref s | ref MB/s | berth ÷ ref | berth out | ref out |\n'
printf '|---|---:|---:|---|---:|---:|---:|---:|---:|\n'
row() { # name berth-args ref-command ext
    local name=$1 args=$2 ref=$3 ext=$4 b r
    b=$(median_seconds "$codec transcode $args $w/berth.$ext")
    r=$(median_seconds "$ref >$w/ref.$ext")
    # The outputs must decode to the original tar.
    case $ext in
        gz) pigz -dc "$w/berth.$ext" | cmp -s - "$w/layer.tar" ;;
        zst) zstd -qdc "$w/berth.$ext" | cmp -s - "$w/layer.tar" ;;
    esac || { echo "berth output of $name does not decode to the input" >&2; exit 1; }
    printf '| %s | %.2f | %.0f | `%s` | %.2f | %.0f | %.2f× | %s | %s |\n' "$name" "$b" \
        "$(echo "$tar_bytes / $b / 1000000" | bc -l)" "$ref" "$r" \
        "$(echo "$tar_bytes / $r / 1000000" | bc -l)" "$(echo "$r / $b" | bc -l)" \
        "$(stat -c %s "$w/berth.$ext")" "$(stat -c %s "$w/ref.$ext")"
}
row "tar → gzip" "none gzip $w/layer.tar" "pigz -6 -c $w/layer.tar" gz
row "tar → zstd" "none zstd $w/layer.tar" "zstd -q -3 -T0 -c $w/layer.tar" zst
row "gzip → zstd" "gzip zstd $w/layer.tar.gz" "pigz -dc $w/layer.tar.gz | zstd -q -3 -T0 -c" zst
row "zstd → gzip" "zstd gzip $w/layer.tar.zst" "zstd -qdc $w/layer.tar.zst | pigz -6 -c" gz
