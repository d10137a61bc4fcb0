#!/usr/bin/env bash
# Side-by-side: berth-transcoder vs `zstd -T0` and `pigz` on the same layer-like tar, same
# machine, same run (issue 6). File -> file, warm cache.
#   benches/compare-codecs.sh [SIZE_MIB=64 | TAR_FILE] [RUNS=5]
# A number generates the synthetic layer of benches/benches/support/layer_data.rs; a path
# uses that tar (e.g. one made from system files, for real-world ratios).
# Each run times berth and then the reference back to back (interleaved), so background load
# hits both alike; the table shows medians of RUNS of wall time and of CPU time (user + sys,
# which the load on a shared machine disturbs far less than wall time).
# berth's numbers include what the registry does in the same pass (sha256 of the
# uncompressed stream and of the output); the command-line tools hash nothing.
set -euo pipefail
input=${1:-64}
runs=${2:-5}
cd "$(dirname "$0")/.."
for tool in zstd pigz gzip bc; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y zstd pigz bc)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install -y time)" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/berth-target}
cargo build --quiet --release -p berth-benches --example codec
codec=$CARGO_TARGET_DIR/release/examples/codec
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
w=$work
if [[ $input =~ ^[0-9]+$ ]]; then
    "$codec" gen "$w/layer.tar" "$input"
    what="generated ${input} MiB layer-like tar"
else
    cp "$input" "$w/layer.tar"
    what="$input"
fi
gzip -6 -c "$w/layer.tar" >"$w/layer.tar.gz" # one member, like docker/Go push
zstd -q -3 -c "$w/layer.tar" >"$w/layer.tar.zst"
tar_bytes=$(stat -c %s "$w/layer.tar")
cd "$w" # commands below name files relative to the work directory

median() { sort -g | sed -n "$(((runs + 1) / 2))p"; }

# measure CMD: appends "wall cpu" of one run of `sh -c CMD` (stdout discarded).
measure() {
    /usr/bin/time -f '%e %U %S' -o "$w/time" sh -c "$1" >/dev/null
    awk '{ printf "%s %.3f\n", $1, $2 + $3 }' "$w/time"
}

printf '%s\n' "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "date: $(date -u '+%F %H:%M') UTC, $(zstd --version | grep -o 'v[0-9.]*'), pigz $(pigz --version 2>&1 | grep -o '[0-9.]*$'), runs: $runs"
printf '%s\n' "input: $what, $tar_bytes bytes ($(stat -c %s $w/layer.tar.gz) gzip -6, $(stat -c %s $w/layer.tar.zst) zstd -3)"
printf '| conversion | berth s | berth MB/s | berth CPU s | reference | ref s | ref MB/s | ref CPU s | speed berth ÷ ref | CPU ref ÷ berth | berth bytes | ref bytes |\n'
printf '|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n'
# summarize NAME REF-COMMAND BERTH-OUTPUT EXT: checks that BERTH-OUTPUT decodes to the input
# and prints the table row from the timings in $w/b (berth) and $w/r (reference).
summarize() {
    local name=$1 ref=$2 out=$3 ext=$4
    case $ext in
        gz) pigz -dc "$out" | cmp -s - "$w/layer.tar" ;;
        zst) zstd -qdc "$out" | cmp -s - "$w/layer.tar" ;;
    esac || { echo "berth output of $name does not decode to the input" >&2; exit 1; }
    local bw bc rw rc ref_md=${ref//|/\\|}
    bw=$(cut -d' ' -f1 "$w/b" | median) bc=$(cut -d' ' -f2 "$w/b" | median)
    rw=$(cut -d' ' -f1 "$w/r" | median) rc=$(cut -d' ' -f2 "$w/r" | median)
    printf '| %s | %.2f | %.0f | %.2f | `%s` | %.2f | %.0f | %.2f | %.2f× | %.2f× | %s | %s |\n' "$name" \
        "$bw" "$(echo "$tar_bytes / $bw / 1000000" | bc -l)" "$bc" "$ref_md" \
        "$rw" "$(echo "$tar_bytes / $rw / 1000000" | bc -l)" "$rc" \
        "$(echo "$rw / $bw" | bc -l)" "$(echo "$rc / $bc" | bc -l)" \
        "$(stat -c %s "$out")" "$(stat -c %s "$w/ref.$ext")"
}
row() { # name berth-args (OUT = output file) ref-command ext
    local name=$1 args=$2 ref=$3 ext=$4 i
    : >"$w/b" && : >"$w/r"
    for i in $(seq "$runs"); do
        measure "$codec transcode ${args/OUT/berth.$ext}" >>"$w/b"
        measure "$ref >$w/ref.$ext" >>"$w/r"
    done
    summarize "$name" "$ref" "$w/berth.$ext" "$ext"
}
# The node's own path: the layer read from a blob store (crc-checked, a stored tar is not
# re-hashed), the output written and committed through an UploadWriter (digest, piece
# hashes, fsync). The reference writes its output to a file.
"$codec" store "$w/store" layer.tar >"$w/stored-digest"
stored_digest=$(cat "$w/stored-digest")
row_stored() { # name to ref-command ext [self]: with "self", ref-command writes ref.EXT itself
    local name=$1 to=$2 ref=$3 ext=$4 i out sink=">$w/ref.$4"
    [ "${5:-}" = self ] && sink=">/dev/null"
    : >"$w/b" && : >"$w/r"
    for i in $(seq "$runs"); do
        measure "$codec stored $w/store $stored_digest none $to" >>"$w/b"
        measure "$ref $sink" >>"$w/r"
    done
    out=$("$codec" stored "$w/store" "$stored_digest" none "$to" | cut -d' ' -f1)
    summarize "$name" "$ref" "$w/store/blobs/sha256/${out:7:2}/${out:7}" "$ext"
}
row_stored "tar → zstd (node path: store in, store out)" zstd "zstd -q -3 -T0 -c layer.tar" zst
row_stored "tar → gzip (node path: store in, store out)" gzip "pigz -6 -c layer.tar" gz
# The same work on the command line: compress, write, digest the output, make it durable.
row_stored "tar → zstd (node path) vs equal work" zstd "zstd -q -3 -T0 -c layer.tar | tee ref.zst | sha256sum; sync ref.zst" zst self
row_stored "tar → gzip (node path) vs equal work" gzip "pigz -6 -c layer.tar | tee ref.gz | sha256sum; sync ref.gz" gz self
row "tar → gzip" "none gzip layer.tar OUT" "pigz -6 -c layer.tar" gz
row "tar → gzip (berth level 9)" "none gzip layer.tar OUT 9" "pigz -6 -c layer.tar" gz
row "tar → zstd" "none zstd layer.tar OUT" "zstd -q -3 -T0 -c layer.tar" zst
row "gzip → zstd" "gzip zstd layer.tar.gz OUT" "pigz -dc layer.tar.gz | zstd -q -3 -T0 -c" zst
row "zstd → gzip" "zstd gzip layer.tar.zst OUT" "zstd -qdc layer.tar.zst | pigz -6 -c" gz
