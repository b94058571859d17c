#!/usr/bin/env bash
# Create .venv and install sealvec with the local embedder and the test tools.
# PyTorch is installed first as the CPU build torch==2.13.0, so that
# sentence-transformers does not pull a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet ".[embed,test]"
python -c "import sealvec._core as core; print('sealvec installed; kernel:', core.simd_level())"
