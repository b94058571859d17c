#!/usr/bin/env bash
# Create .venv and install sealvec with the local embedder, the Azure and OpenAI
# clients and the test tools; install the storage emulator the tests start.
# PyTorch is installed first as the CPU build torch==2.13.0, so that
# sentence-transformers does not pull a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet ".[embed,azure,openai,test]"
python -c "import sealvec._core as core; print('sealvec installed; kernel:', core.simd_level())"

# Azurite (Azure Storage emulator) for the Azure tests, pinned in package-lock.json.
if command -v npm >/dev/null 2>&1; then
    npm ci --no-audit --no-fund --loglevel=error
else
    echo "npm not found: the Azure Blob tests need Node.js 20 and npm" >&2
    exit 1
fi
