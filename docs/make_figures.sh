#!/usr/bin/env bash
# Regenerates the README's pictures from models/default and the phantom study
# (python -m train.phantom --patients 350 --slices 28 --out data/phantom --seed 0).
# PHANTOM-0002/0005/0006 are held-out patients of models/default's split.
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:-data/phantom}
ctgen sample --n 16 --seed 0 --out docs/sample.png --force --quiet
ctgen interpolate "$study/PHANTOM-0002/0008.dcm" "$study/PHANTOM-0005/0018.dcm" --steps 8 --with-originals \
    --out docs/interpolate.png --force --quiet
ctgen traverse "$study/PHANTOM-0006/0013.dcm" --units 0-4 --out docs/traverse_0-4.png --force --quiet
ctgen traverse "$study/PHANTOM-0006/0013.dcm" --units top5 --out docs/traverse_top5.png --force --quiet
ctgen reconstruct "$study/PHANTOM-0006/0013.dcm" --out docs/reconstruct --force --quiet
