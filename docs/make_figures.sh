#!/usr/bin/env bash
# Regenerates the README's pictures from models/default with the commands the README shows (the example
# slices that ship with ctgen: three phantom patients that no training study holds).
set -euo pipefail
cd "$(dirname "$0")/.."
ctgen sample --n 16 --seed 0 --out docs/sample.png --force --quiet
ctgen sample --n 16 --seed 0 --prior standard --out docs/sample_standard.png --force --quiet
ctgen interpolate "$(ctgen example a)" "$(ctgen example c)" --steps 8 --with-originals \
    --out docs/interpolate.png --force --quiet
ctgen traverse "$(ctgen example a)" --units 0-4 --out docs/traverse_0-4.png --force --quiet
ctgen traverse "$(ctgen example a)" --units top5 --out docs/traverse_top5.png --force --quiet
ctgen traverse "$(ctgen example a)" --units top5 --window bone --out docs/traverse_bone.png --force --quiet
ctgen reconstruct "$(ctgen example a)" --out docs/reconstruct/ --force --quiet
