"""ONNX Runtime decode speed of two model folders side by side (issue 26: the resize-convolution decoder against
the transposed one it replaced), at batch 1 and 16, in alternating rounds on the same inputs. Not collected by
pytest.

    python tests/bench/bench_decoder.py models/default OLD_MODEL_DIR --rounds 7

Prints images/s per model and batch (median and range over the rounds) and the ratio of the first to the second,
measured round by round. Take figures on an idle machine (check ``uptime``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ctgen.runtime.model import load_model  # noqa: E402


def rate(model, z: np.ndarray, seconds: float) -> float:
    """Images decoded per second over about ``seconds`` (after one warm-up call)."""
    model.decode(z)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.decode(z)
        count += len(z)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="model folder")
    parser.add_argument("second", help="model folder to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per model, batch and round")
    args = parser.parse_args(argv)
    models = [load_model(path, device="cpu") for path in (args.first, args.second)]
    for batch in (1, 16):
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal((batch, model.latent_size)).astype(np.float32) for model in models]
        rates: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for k, model in enumerate(models):
                rates[k].append(rate(model, inputs[k], args.seconds))
        ratios = [a / b for a, b in zip(*rates)]
        for k, path in enumerate((args.first, args.second)):
            print(f"batch {batch:2d} {path}: {statistics.median(rates[k]):7.1f} images/s "
                  f"({min(rates[k]):.1f}-{max(rates[k]):.1f})")
        print(f"batch {batch:2d} ratio first/second: {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), {args.rounds} alternating rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
