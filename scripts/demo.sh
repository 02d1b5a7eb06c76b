#!/usr/bin/env bash
# The local demo: installs the models and system packages (scripts/install.sh), then starts an
# agent on the embedded engines and places a simulated Twilio call to it. Prints both sides'
# words and each turn's latency with its stage breakdown; writes the call to demo-call.wav.
# Extra arguments go to `grokcast-harness demo`, e.g. --say "Do you deliver on Sundays?".
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo needs neither the test runner nor the test cluster's Kubernetes parts.
./scripts/install.sh --skip-cluster --skip-nextest --skip-browser
# Shares the build with scripts/test.sh (an explicit CARGO_TARGET_DIR wins).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grokcast/target}"
# The dev profile builds dependencies at opt-level 2 and shares the test build.
# Gemma runs in its own server process: llama.cpp and whisper.cpp cannot share one binary.
cargo build -p grokcast-engines --no-default-features --features llama --bin grokcast-serve-llm
cargo run -p grokcast-harness -- demo "$@"
