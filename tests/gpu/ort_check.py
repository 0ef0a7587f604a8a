"""ONNX Runtime on CUDA against the CPU for one exported model: ``ort_check.py MODEL_DIR RESULT.json [options]``.

Runs in its own process so that onnxruntime-gpu, staged in a folder of its own, comes first on PYTHONPATH
here and nowhere else. Through ``ctgen.runtime.model.load_model`` (the runtime's own sessions, CUDA probe and IO
binding), it decodes prior samples and encodes them back with the fp32 graphs on CUDA, the fp16 graphs
on CUDA and the fp32 graphs on the CPU, reports the largest differences from the CPU and the images/s of
each, and writes a 4x4 grid of samples as a PNG. With ``--device cpu`` (the dry run) a second CPU model
stands in for CUDA, so the same code runs without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

FP32_TOLERANCE = 1e-2  # ORT's CUDA provider may run fp32 convolutions as TF32
FP16_TOLERANCE = 2e-2  # the export's own tolerance for the fp16 graphs against PyTorch


def _timed(function, repeats: int) -> tuple[float, object]:
    result = function()  # warm-up: session start, cuDNN algorithm choice
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _session_facts(model) -> dict:
    facts = {"provider": model.provider}
    for graph, session in sorted(getattr(model, "_sessions", {}).items()):  # what ctgen.runtime.model really built
        facts[graph] = {"file": Path(session.path).name, "provider": session.provider,
                        "io_binding": bool(getattr(session, "use_io_binding", False))}  # fmt: skip
    return facts


def _load_cuda(model_dir: Path, precision: str) -> tuple[object, str]:
    """load_model(device="cuda"); if the CUDA libraries are not found, again after torch has loaded its own."""
    from ctgen.errors import ModelError
    from ctgen.runtime.model import load_model

    try:
        return load_model(model_dir, device="cuda", precision=precision), "onnxruntime preload_dlls"
    except ModelError as first:
        try:
            import torch  # its CUDA and cuDNN libraries are the ones onnxruntime-gpu 1.31 links against

            torch.cuda.init()
            return load_model(model_dir, device="cuda", precision=precision), f"after importing torch ({first})"
        except Exception:
            raise first from None


def _compare(reference: dict, candidate: dict) -> dict:
    diffs = {}
    for name, ref in reference.items():
        scale = max(1.0, float(np.abs(ref).max()))
        diffs[name] = {"max_abs_diff": float(np.abs(candidate[name] - ref).max()), "scale": scale}
    return diffs


def _run(model, z: np.ndarray, images: np.ndarray, repeats: int) -> tuple[dict, dict]:
    decode_s, decoded = _timed(lambda: model.decode(z), repeats)
    encode_s, (mu, logvar) = _timed(lambda: model.encode(images), repeats)
    timing = {"decode_images_per_s": len(z) / decode_s, "encode_images_per_s": len(images) / encode_s,
              "decode_s": decode_s, "encode_s": encode_s, "images": len(z), "repeats": repeats}  # fmt: skip
    return {"image": decoded, "mu": mu, "logvar": logvar}, timing


def save_grid(images: np.ndarray, path: Path, caption: str) -> None:
    """float (16, 1, S, S) in [0, 1] (the model's window) -> 4x4 grayscale PNG with a caption line."""
    from PIL import Image, ImageDraw

    size = images.shape[-1]
    tiles = (np.clip(images[:16, 0], 0, 1) * 255 + 0.5).astype(np.uint8).reshape(4, 4, size, size)
    mosaic = tiles.transpose(0, 2, 1, 3).reshape(4 * size, 4 * size)
    picture = Image.new("L", (4 * size, 4 * size + 16), 0)
    picture.paste(Image.fromarray(mosaic), (0, 16))
    ImageDraw.Draw(picture).text((4, 2), caption, fill=255)
    picture.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--images", type=int, default=64, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model (CPU: at most 3)")
    parser.add_argument("--samples", type=Path, help="write a 4x4 grid of prior samples here")
    parser.add_argument("--caption", default="")
    args = parser.parse_args()

    result: dict = {"device": args.device}
    try:
        import onnxruntime

        from ctgen.runtime.model import load_model

        result["onnxruntime"] = {"version": onnxruntime.__version__, "file": onnxruntime.__file__,
                                 "providers": onnxruntime.get_available_providers()}  # fmt: skip
        cpu = load_model(args.model, device="cpu")
        rng = np.random.default_rng(0)
        z = rng.standard_normal((args.images, cpu.latent_size)).astype(np.float32)
        images = cpu.decode(z)  # head-like inputs for the encoder
        reference, timing = _run(cpu, z, images, min(args.repeats, 3))
        result["cpu"] = {"timing": timing, **_session_facts(cpu)}
        if args.samples is not None:
            prior = np.random.default_rng(1).standard_normal((16, cpu.latent_size)).astype(np.float32)
            save_grid(cpu.decode(prior), args.samples, args.caption)
            result["samples_png"] = args.samples.name
        variants = {"fp32": "fp32", "fp16": "auto"} if args.device == "cuda" else {"fp32 (CPU stand-in)": "fp32"}
        for label, precision in variants.items():
            try:
                if args.device == "cuda":
                    model, loaded = _load_cuda(args.model, precision)
                else:
                    model, loaded = load_model(args.model, device="cpu", precision=precision), "cpu stand-in"
                outputs, timing = _run(model, z, images, args.repeats)
            except Exception as exc:  # recorded; the other variant still runs
                result[label] = {"error": f"{type(exc).__name__}: {exc}", "within_tolerance": False}
                continue
            diffs = _compare(reference, outputs)
            tolerance = FP16_TOLERANCE if label == "fp16" else FP32_TOLERANCE
            result[label] = {
                "loaded": loaded, "timing": timing, "diff_vs_cpu": diffs, "tolerance": tolerance,
                "within_tolerance": all(d["max_abs_diff"] <= tolerance * d["scale"] for d in diffs.values()),
                "speedup_vs_cpu": {kind: timing[kind] / result["cpu"]["timing"][kind]
                                   for kind in ("decode_images_per_s", "encode_images_per_s")},
                **_session_facts(model),
            }  # fmt: skip
        checked = {key: entry for key, entry in result.items()
                   if isinstance(entry, dict) and "within_tolerance" in entry}  # fmt: skip
        result["ok"] = all(entry["within_tolerance"] for entry in checked.values())
        errors = [f"{key}: {entry['error']}" for key, entry in checked.items() if "error" in entry]
        if errors:
            result["error"] = "; ".join(errors)
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    args.result.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
