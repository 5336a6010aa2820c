"""Images per second: the tensor-resident path vs torchvision's DataLoader + per-image transforms.

Four comparisons, each side by side in one process, alternating the paths, median of the repeats;
the DataLoader uses cnnkit's default worker count for this machine:
1. in memory: CIFAR-shaped generated uint8 images, random crop (4 px) + flip, batch 128;
2. a 32x32 PNG class-folder tree of 10,000 generated images, random crop + flip: the cached tensor
   path (``data.cache=memory``) after its first epoch, and its first epoch with the decoding, vs
   DataLoader epochs (``data.cache=none``);
3. a 128x128 JPEG tree of 3,000 generated images, random resized crop + flip + colour jitter;
4. whole training runs (``python -m cnnkit fit``, the quickstart model, 4 epochs) on a 32x32 folder
   of 5,000 images: the default vs ``data.loader=dataloader data.cache=none``.

    python benchmarks/dataloader.py [--repeats 3] [--skip-runs]
Targets: (1) and (2) at least 5x after the first epoch, (2)'s first epoch no slower than a
DataLoader epoch, (3) at least 1.5x, (4) at least 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import cnnkit  # noqa: E402


def images_per_second(loader) -> float:
    start, count = time.perf_counter(), 0
    for x, _ in loader:
        count += x.shape[0]
    return count / (time.perf_counter() - start)


def make_folder(root: Path, size: int, train: int, fmt: str, classes: int = 10) -> Path:
    """``root/{train,val}/c<k>/*.<fmt>``: smooth random colour images (they compress like photos)."""
    import numpy as np
    from PIL import Image

    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", max(classes, train // 10))):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // classes):
                coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
                image.save(folder / f"{i}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
    (root / "done").write_text("")
    return root


def loaders(common: list[str], paths: dict[str, list[str]]):
    built = {}
    for name, overrides in paths.items():
        datamodule = cnnkit.build_datamodule(cnnkit.load_config([], [*common, *overrides]))
        started = time.perf_counter()
        datamodule.load()
        loader = datamodule.train_dataloader()
        built[name] = (loader, time.perf_counter() - started)
        workers = getattr(loader, "num_workers", 0)
        print(f"  {name}: {type(loader).__name__}" + (f", {workers} workers" if workers else ""))
    return built


def compare(title: str, common: list[str], repeats: int, first_epoch: bool = False) -> dict:
    print(title)
    built = loaders(
        common,
        {
            "tensor": ["data.loader=tensor", "data.cache=memory"],
            "dataloader": ["data.loader=dataloader", "data.cache=none"],
        },
    )
    result: dict = {}
    if first_epoch:  # the cached path's first epoch: decoding (timed at load) plus one pass
        loader, decode_s = built["tensor"]
        first = decode_s + len(loader) * loader.batch_size / images_per_second(loader)
        result["tensor_first_epoch_s"] = first
        result["decode_s"] = decode_s
    rates: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(repeats):
        for name, (loader, _) in built.items():
            rates[name].append(images_per_second(loader))
    tensor, dataloader = statistics.median(rates["tensor"]), statistics.median(rates["dataloader"])
    result.update(
        tensor_images_per_s=tensor, dataloader_images_per_s=dataloader, speedup=tensor / dataloader, all=rates
    )
    print(f"  tensor {tensor:,.0f} images/s, DataLoader {dataloader:,.0f} images/s: {tensor / dataloader:.1f}x")
    if first_epoch:
        images = len(built["tensor"][0]) * built["tensor"][0].batch_size
        dataloader_epoch = images / dataloader
        result["dataloader_epoch_s"] = dataloader_epoch
        print(
            f"  first epoch of the cached path (decoding {result['decode_s']:.2f} s included): "
            f"{result['tensor_first_epoch_s']:.2f} s vs a DataLoader epoch {dataloader_epoch:.2f} s"
        )
    return result


def training_runs(folder: Path, repeats: int) -> dict:
    print("whole runs: python -m cnnkit fit (quickstart model, 4 epochs) on a 32x32 folder of 5,000 images")
    common = [
        sys.executable,
        "-m",
        "cnnkit",
        "fit",
        "--config",
        str(REPO / "recipes/quickstart.yaml"),
        f"data.dataset={{name: image_folder, root: {folder}}}",
        "trainer.max_epochs=4",
        "trainer.progress_bar=none",
        "logger.wandb.mode=disabled",
        "--overwrite",
    ]
    variants = {"default": [], "dataloader": ["data.loader=dataloader", "data.cache=none"]}
    times: dict[str, list[float]] = {name: [] for name in variants}
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(repeats):
            for name, extra in variants.items():
                started = time.perf_counter()
                subprocess.run(
                    [*common, *extra, f"name=bench_{name}"], cwd=cwd, env=env, check=True, capture_output=True
                )
                times[name].append(time.perf_counter() - started)
    default, dataloader = statistics.median(times["default"]), statistics.median(times["dataloader"])
    print(
        f"  default {default:.1f} s, data.loader=dataloader data.cache=none {dataloader:.1f} s: "
        f"{dataloader / default:.2f}x"
    )
    return {"default_s": default, "dataloader_s": dataloader, "speedup": dataloader / default, "all": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20000, help="in-memory comparison's images")
    parser.add_argument("--skip-runs", action="store_true", help="leave out the whole training runs")
    parser.add_argument(
        "--data",
        default=str(Path(tempfile.gettempdir()) / "cnnkit-bench-folders"),
        help="where the generated folders are kept between runs",
    )
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "dataloader.json"))
    args = parser.parse_args()
    data = Path(args.data)
    results = {"cpu_count": os.cpu_count()}
    results["in_memory_32px"] = compare(
        f"in memory: {args.samples:,} CIFAR-shaped images, random crop + flip, batch 128",
        [
            f"data.dataset={{name: synthetic, shape: [3, 32, 32], samples: {args.samples}}}",
            "data.batch_size=128",
            "data.augment=[random_crop, horizontal_flip]",
        ],
        args.repeats,
    )
    png = make_folder(data / "png32", 32, 10_000, "png")
    results["folder_png_32px"] = compare(
        "32x32 PNG folder, 10,000 images, random crop + flip, batch 128",
        [
            f"data.dataset={{name: image_folder, root: {png}}}",
            "data.batch_size=128",
            "data.augment=[random_crop, horizontal_flip]",
        ],
        args.repeats,
        first_epoch=True,
    )
    jpg = make_folder(data / "jpg128", 128, 3_000, "jpg")
    results["folder_jpeg_128px"] = compare(
        "128x128 JPEG folder, 3,000 images, random resized crop + flip + colour jitter, batch 64",
        [
            f"data.dataset={{name: image_folder, root: {jpg}}}",
            "data.batch_size=64",
            "data.augment=[random_resized_crop, horizontal_flip, color_jitter]",
        ],
        args.repeats,
        first_epoch=True,
    )
    if not args.skip_runs:
        results["training_runs_32px"] = training_runs(
            make_folder(data / "png32_5k", 32, 5_000, "png"), max(1, args.repeats // 2)
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
