#!/usr/bin/env bash
# Conversion benchmark: lazyblk convert vs `tar | gzip -1` of the same tree,
# measured in the same run, plus lazyblk's peak RSS.
#   WEIGHTS=1GiB TEXT=256MiB scripts/bench/convert.sh
# Sizes in bytes or with K/M/G suffixes (numfmt --from=iec).
default_weights=1G default_text=256M
source "$(dirname "$0")/lib.sh"

# Reference: the same tree, unpacked, packed by tar | gzip -1.
mkdir "$work/tree"
for l in $(ls -S "$work/src/blobs/sha256"); do
  f="$work/src/blobs/sha256/$l"
  [ "$(stat -c %s "$f")" -gt 4096 ] && tar -C "$work/tree" -xf "$f" 2>/dev/null || true
done
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(date +%s%N); tar -C "$work/tree" -cf - . | gzip -1 >/dev/null; t1=$(date +%s%N)
ref_ms=$(( (t1 - t0) / 1000000 ))
rm -rf "$work/tree"

measure() { # label, extra flags...
  local label=$1; shift
  rm -rf "$work/out"
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$work/lazyblk" convert --tmp-dir "$work" "$@" "oci:$work/src:v1" "oci:$work/out:v1" >/dev/null 2>&1
  t1=$(date +%s%N)
  local ms=$(( (t1 - t0) / 1000000 )) rss_kb
  rss_kb=$(cat "$work/rss")
  printf '%-34s %8d ms  ratio vs tar|gzip -1: %5.2f  peak RSS %5d MiB\n' "$label" "$ms" \
    "$(echo "$ref_ms / $ms" | bc -l)" $((rss_kb / 1024))
}
printf '%-34s %8d ms\n' "tar | gzip -1 (reference)" "$ref_ms"
measure "lazyblk convert --no-fallback" --no-fallback
measure "lazyblk convert (with fallback)"
echo "(ratio > 1: lazyblk faster; cores: $(nproc))"
