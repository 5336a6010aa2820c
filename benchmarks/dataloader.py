"""Images per second: the tensor-resident path vs torchvision's DataLoader + transforms.

CIFAR-shaped data (generated uint8 3x32x32 images), the same augmentation on both paths (random
crop with 4 px padding, horizontal flip), batch 128, one pass over the training split per repeat;
the DataLoader uses cnnkit's default worker count for this machine. Median of the repeats.

    python benchmarks/dataloader.py [--repeats 3] [--samples 20000]
Target: the tensor path at least 5x the DataLoader path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cnnkit  # noqa: E402


def images_per_second(loader) -> float:
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "dataloader.json"))
    args = parser.parse_args()
    common = [f"data.dataset={{name: synthetic, shape: [3, 32, 32], samples: {args.samples}}}",
              "data.batch_size=128", "data.augment=[random_crop, horizontal_flip]"]
    loaders = {}
    for path in ("tensor", "dataloader"):
        datamodule = cnnkit.build_datamodule(cnnkit.load_config([], [*common, f"data.loader={path}"]))
        loaders[path] = datamodule.train_dataloader()
        workers = getattr(loaders[path], "num_workers", 0)
        print(f"{path}: {type(loaders[path]).__name__}" + (f", {workers} workers" if path == "dataloader" else ""))
    rates = {path: [] for path in loaders}
    for _ in range(args.repeats):  # alternate the two paths
        for path, loader in loaders.items():
            rates[path].append(images_per_second(loader))
    tensor, dataloader = statistics.median(rates["tensor"]), statistics.median(rates["dataloader"])
    print(f"{'path':<12} {'images/s':>12}")
    print(f"{'tensor':<12} {tensor:>12,.0f}")
    print(f"{'dataloader':<12} {dataloader:>12,.0f}")
    print(f"speed-up: {tensor / dataloader:.1f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"tensor_images_per_s": tensor, "dataloader_images_per_s": dataloader,
                                             "speedup": tensor / dataloader, "all": rates}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
