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
# bound units (a model trained with --bind): rows in the factors' own units, an edit before/after
ctgen traverse "$(ctgen example a)" --units rotation_deg,head_width_max_mm,ventricle_mm2 \
    --out docs/traverse_bound.png --force --quiet
ctgen edit "$(ctgen example a)" --set rotation_deg=+15 --out docs/edit_rotation.png --force --quiet
ctgen edit "$(ctgen example a)" --set ventricle_mm2=+900 --out docs/edit_ventricles.png --force --quiet
# the controllability figures come from ctgen evaluate (reports/default/control_<factor>.png)
