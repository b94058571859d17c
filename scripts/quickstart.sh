#!/usr/bin/env bash
# Install sealvec, seal the bundled Python standard-library corpus into ./demo-store
# with the embedded defaults (local directory, local keyring, local embedder), then
# ask it a question in plain English.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
. .venv/bin/activate

# The keyring lives outside the store; by default in ~/.config/sealvec/.
sealvec ingest ./demo-store data/corpus/stdlib-docs.jsonl \
    --vectors data/corpus/stdlib-docs.minilm.npy --model local:all-MiniLM-L6-v2
sealvec query ./demo-store "read rows from a comma separated values file" -k 5
sealvec verify ./demo-store
