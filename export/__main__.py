"""``python -m export RUN_DIR_OR_CHECKPOINT --out models/<name> [options]``.

Writes encoder.onnx, decoder.onnx (+ fp16 variants with --fp16) and model.json, validated against
PyTorch. A summary goes to stderr; errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a training run (its checkpoint_best.pt) or a checkpoint to a validated ONNX model folder.",
    )
    add = parser.add_argument
    add("source", metavar="RUN_DIR_OR_CHECKPOINT", help="run folder (uses checkpoint_best.pt) or a .pt checkpoint")
    add("--out", required=True, help="model folder to write, e.g. models/default")
    add("--name", help="model name in the card (default: the --out folder's name)")
    add("--fp16", action="store_true", help="also write encoder_fp16.onnx / decoder_fp16.onnx (CUDA only)")
    add("--opset", type=int, default=18, help="ONNX opset (>= 18; default 18)")
    add("--validation-data", metavar="DICOM_DIR", help="real slices for the parity check (DICOM folder or file)")
    add("--max-validation-slices", type=int, default=32, help="at most this many files, spread over the folder")
    add("--tolerance", type=float, default=1e-4, help="max |ORT - PyTorch| for fp32 graphs (default 1e-4)")
    add("--fp16-tolerance", type=float, default=2e-2, help="max |ORT fp16 - PyTorch fp32| (default 2e-2)")
    add("--seed", type=int, default=0, help="seed of the random validation inputs")
    add("--torchscript", action="store_true", help="use the legacy TorchScript exporter instead of dynamo")
    add("--force", action="store_true", help="replace an existing --out folder")
    add("--keep-unit-order", action="store_true",
        help="export units in the network's order (default: sorted by validation KL, unit 0 the most informative)")
    args = parser.parse_args(argv)

    from ctgen.errors import CtgenError
    from export.onnx_export import export_model

    command = " ".join(["python -m export", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        out = export_model(
            args.source, args.out, name=args.name, opset=args.opset, fp16=args.fp16, force=args.force,
            validation_data=args.validation_data, max_validation_slices=args.max_validation_slices,
            tolerance=args.tolerance, fp16_tolerance=args.fp16_tolerance, seed=args.seed, command=command,
            dynamo=not args.torchscript, order_units=not args.keep_unit_order,
        )
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _summary(out)
    return 0


def _summary(out: Path) -> None:
    import json

    card = json.loads((out / "model.json").read_text(encoding="utf-8"))
    export = card["export"]
    print(f"wrote {out}: {card['image_size']}px, latent {card['latent_size']}, opset {export['opset']}, "
          f"{export['exporter']}", file=sys.stderr)
    for name, entry in card["files"].items():
        print(f"  {name:<20} {entry['bytes'] / 1e6:7.2f} MB  sha256 {entry['sha256'][:16]}", file=sys.stderr)
    for key in ("parity", "parity_fp16"):
        if key in export:
            figures = ", ".join(f"{graph}.{output} {diff:.2e}" for graph, outputs in export[key]["max_abs_diff"].items()
                                for output, diff in outputs.items())
            print(f"  {key}: max |ORT - PyTorch| {figures} (tolerance {export[key]['tolerance']:g}, "
                  f"{export[key]['real_slices']} real slices)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
