#!/usr/bin/env bash
# Keeps a shared Cargo target directory from filling the disk. Each change of Cargo.lock,
# features or profile leaves the old artifacts behind, and nothing removes them: a cache that
# one machine reuses across many clones grows until a build fails with "No space left on
# device" (it did, in CI). Before a build this script
#   - removes incremental state (the test script builds with CARGO_INCREMENTAL=0),
#   - removes the whole debug profile when the filesystem has less free space than a full
#     test build needs (GROKCAST_MIN_FREE_GB, default 30) or the profile itself is larger
#     than GROKCAST_MAX_TARGET_GB (default 40): the next build is cold, but it finishes.
# Usage: scripts/prune-target.sh TARGET_DIR
set -euo pipefail

target="${1:?usage: prune-target.sh TARGET_DIR}"
min_free_gb="${GROKCAST_MIN_FREE_GB:-30}"
max_target_gb="${GROKCAST_MAX_TARGET_GB:-40}"
debug="$target/debug"
[ -d "$debug" ] || exit 0

rm -rf "$debug/incremental"

free_gb=$(( $(df -Pk "$target" | awk 'NR == 2 { print $4 }') / 1024 / 1024 ))
size_gb=$(( $(du -sk "$debug" | cut -f1) / 1024 / 1024 ))
if [ "$free_gb" -lt "$min_free_gb" ] || [ "$size_gb" -gt "$max_target_gb" ]; then
  echo "==> prune-target: $debug holds ${size_gb} GB with ${free_gb} GB free; removing it (cold build)"
  rm -rf "$debug"
fi
