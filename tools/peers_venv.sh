#!/usr/bin/env bash
# A separate virtual environment with Ultralytics, for `python tools/benchmark.py peers` (Ultralytics is not a
# dependency of this toolkit and never installed into its own environment).
#
#   bash tools/peers_venv.sh                 # makes .venv-peers
#   bash tools/peers_venv.sh /path/to/venv   # elsewhere; then: tools/benchmark.py peers --peers-python /path/to/venv/bin/python
#
# torch and torchvision are pinned by constraints.txt (the pair whose C++ ops load on the CPU-only machines this
# project is tested on); Ultralytics brings the rest (about 6 GB with the CUDA torch wheels, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-peers}"
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt ultralytics
"$VENV/bin/python" -c "import ultralytics, torch; print(f'ultralytics {ultralytics.__version__}, torch {torch.__version__} in $VENV')"
