"""One ``train.train.train`` call in its own process, for the acceptance run: ``train_worker.py SPEC.json``.

SPEC holds {"config": TrainConfig fields, "result": path, "command": text}. The result JSON gets the
summary ``train`` returns plus what the acceptance report needs from inside the process: wall time,
peak GPU memory (torch.cuda.max_memory_allocated / reserved) and where the slice cache lived. ``train``
pins the cache in host memory only when it does not keep it on the GPU, so a pin_memory call on the
cache tells the two apart without reaching into the loop.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result"])
    started = time.perf_counter()
    result: dict = {"config": spec["config"]}
    try:
        import torch

        from train.train import TrainConfig, train

        result["import_s"] = time.perf_counter() - started
        result["environment"] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                                 "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                                 "capability": list(torch.cuda.get_device_capability(0))
                                 if torch.cuda.is_available() else None}  # fmt: skip
        pinned = []
        pin_memory = torch.Tensor.pin_memory

        def recording_pin_memory(tensor, *args, **kwargs):
            pinned.append(tensor.numel() * tensor.element_size())
            return pin_memory(tensor, *args, **kwargs)

        torch.Tensor.pin_memory = recording_pin_memory
        summary = train(TrainConfig(**spec["config"]), command=spec.get("command", ""))
        torch.Tensor.pin_memory = pin_memory
        result["summary"] = {key: summary[key] for key in ("run", "best_val_loss", "epochs", "world_size")}
        cuda = torch.cuda.is_available() and spec["config"].get("device") != "cpu"
        result["cache_on_gpu"] = cuda and not pinned
        result["pinned_bytes"] = sum(pinned)
        if cuda:
            result["gpu"] = torch.cuda.get_device_name(0)
            result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            result["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        result["ok"] = True
    except BaseException as exc:  # the parent reads the reason from the result file
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["wall_s"] = time.perf_counter() - started
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
