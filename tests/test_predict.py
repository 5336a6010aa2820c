"""``predict`` on one file, several files, a glob and a folder: a table for a few images, always a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cnnkit.cli import main
from tests.conftest import QUICKSTART, SMOKE, cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import cnnkit

    root = tmp_path_factory.mktemp("predict")
    cfg = cnnkit.load_config([QUICKSTART, SMOKE], [f"runs_dir={root / 'runs'}"])
    return cnnkit.fit(cfg).last_checkpoint


@pytest.fixture
def images(tmp_path):
    """images/3/{0,1,2}.png (in a folder named after class 3) and images/loose/x.png (no class)."""
    from PIL import Image

    for folder, names in (("3", ["0", "1", "2"]), ("loose", ["x"])):
        (tmp_path / "images" / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "images" / folder / f"{name}.png")
    return tmp_path / "images"


def predict(capsys, checkpoint, *args: str) -> tuple[list[str], list[dict[str, str]]]:
    out = Path("out.csv")
    assert main(["predict", "--ckpt", str(checkpoint), *args, "--output", str(out), "trainer.progress_bar=none"]) == 0
    printed = capsys.readouterr().out.splitlines()
    return printed, list(csv.DictReader(open(out)))


def test_one_file(capsys, checkpoint, images):
    printed, rows = predict(capsys, checkpoint, "--input", str(images / "3" / "0.png"))
    assert [r["file"] for r in rows] == [str(images / "3" / "0.png")]
    # trained on digits, not on an image folder: a file's folder says nothing about its label
    assert list(rows[0]) == ["file", "class", "probability", "top3"]
    top = [item.split(":") for item in rows[0]["top3"].split()]
    assert top[0][0] == rows[0]["class"] and float(top[0][1]) == pytest.approx(float(rows[0]["probability"]))
    assert [float(p) for _, p in top] == sorted((float(p) for _, p in top), reverse=True)
    assert printed[0].split() == ["file", "class", "probability", "top3"]
    assert len(printed) == 3 and printed[-1] == (
        "cnnkit: wrote 1 prediction to out.csv; no true labels: a file's label is read only for a model trained "
        "on files that carry it (an image folder: a folder named after its class); this one was trained on digits"
    )


def test_several_files_a_glob_and_a_folder(capsys, checkpoint, images):
    files = [str(images / "3" / "1.png"), str(images / "loose" / "x.png")]
    _, rows = predict(capsys, checkpoint, "--input", files[0], "--input", files[1])
    assert [r["file"] for r in rows] == files

    _, rows = predict(capsys, checkpoint, "--input", str(images / "*" / "*.png"))
    assert sorted(Path(r["file"]).name for r in rows) == ["0.png", "1.png", "2.png", "x.png"]

    printed, rows = predict(capsys, checkpoint, "--input", str(images))
    assert len(rows) == 4 and len(printed) == 1 + 4 + 1  # header, one row per image, the summary line


def test_a_model_trained_on_an_image_folder_knows_the_labels_of_files_laid_out_alike(capsys, tmp_path):
    from PIL import Image

    import cnnkit

    for split in ("train", "val"):
        for name, value in (("cat", 30), ("dog", 200)):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            for i in range(8):
                Image.new("L", (8, 8), value + i).save(tmp_path / "pets" / split / name / f"{i}.png")
    cfg = cnnkit.load_config(
        [QUICKSTART, SMOKE],
        [
            f"data.dataset={{name: image_folder, root: {tmp_path / 'pets'}}}",
            "data.batch_size=8",
            f"runs_dir={tmp_path / 'runs'}",
        ],
    )
    model = cnnkit.fit(cfg).last_checkpoint
    (tmp_path / "new").mkdir()
    Image.new("L", (8, 8), 30).save(tmp_path / "new" / "unsorted.png")
    capsys.readouterr()  # the fit's own lines
    printed, rows = predict(
        capsys, model, "--input", str(tmp_path / "pets" / "val"), "--input", str(tmp_path / "new" / "unsorted.png")
    )
    assert list(rows[0]) == ["file", "class", "probability", "label", "correct", "top2"]
    assert [r["label"] for r in rows] == ["cat"] * 8 + ["dog"] * 8 + [""]  # a folder named after no class
    assert all(r["correct"] == ("yes" if r["class"] == r["label"] else "no") for r in rows[:16])
    correct = sum(r["correct"] == "yes" for r in rows)
    assert (
        printed[-1] == f"cnnkit: wrote 17 predictions to out.csv; accuracy {correct / 16:.4f} on the 16 with a "
        f"known label"
    )
    assert len(printed) == 1 + 17 + 1
    printed, rows = predict(capsys, model, "--input", str(tmp_path / "new"))
    assert list(rows[0]) == ["file", "class", "probability", "top2"]
    assert printed[-1] == (
        "cnnkit: wrote 1 prediction to out.csv; no true labels: no file sits in a folder named "
        "after one of the model's classes (cat, dog)"
    )


def test_many_images_are_a_csv_without_a_table(capsys, checkpoint, tmp_path):
    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(21):
        Image.new("L", (8, 8), i).save(folder / f"{i:02d}.png")
    printed, rows = predict(capsys, checkpoint, "--input", str(folder))
    assert len(rows) == 21 and printed[0] == "cnnkit: 21 images: more than 20, so no table here (the CSV has them all)"
    assert len(printed) == 2 and printed[1].startswith("cnnkit: wrote 21 predictions to out.csv; no true labels: ")


def test_a_split_has_its_true_labels(capsys, checkpoint):
    printed, rows = predict(capsys, checkpoint, "--split", "val")
    assert len(rows) == 180 and all(r["label"] for r in rows)
    correct = sum(r["correct"] == "yes" for r in rows)
    assert (
        printed[-1] == f"cnnkit: wrote 180 predictions to out.csv; accuracy {correct / 180:.4f} on the 180 "
        f"with a known label"
    )


def test_paths_are_never_overrides_and_the_hint_works(tmp_path, checkpoint, images):
    # what a shell makes of an unquoted glob: bare paths after one --input
    a, b = str(images / "3" / "0.png"), str(images / "3" / "1.png")
    proc = cli("predict", "--ckpt", str(checkpoint), "--input", a, b)
    assert proc.returncode == 2 and "repeat --input per path (--input a.png --input b.png)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    fixed = cli("predict", "--ckpt", str(checkpoint), "--input", a, "--input", b)
    assert fixed.returncode == 0, fixed.stderr
    assert "cnnkit: wrote 2 predictions" in fixed.stdout

    # a path that contains '=' (run directories are named from overrides) is still a path
    odd = tmp_path / "norm=bn_post"
    odd.mkdir()
    (odd / "y.png").write_bytes((images / "3" / "2.png").read_bytes())
    proc = cli("predict", "--ckpt", str(checkpoint), "--input", str(odd))
    assert proc.returncode == 0, proc.stderr
    proc = cli("predict", "--ckpt", str(checkpoint), str(odd / "y.png"))
    assert proc.returncode == 2 and "is a path, not an option or KEY=VALUE override" in proc.stderr


@pytest.mark.parametrize(
    "given, message",
    [
        ("missing.png", "input 'missing.png' does not exist"),
        ("nothing/*.png", "no images match 'nothing/*.png'"),
    ],
)
def test_an_input_that_names_no_image_is_one_line(tmp_path, checkpoint, given, message):
    proc = cli("predict", "--ckpt", str(checkpoint), "--input", given)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
