import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.data.datamodule import ClassificationDataModule
from cnnkit.errors import ConfigError, DataError
from cnnkit.registry import DATASETS


def load_splits(spec):
    return DATASETS.build(spec).load()


def datamodule(*overrides):
    cfg = load_config([], list(overrides))
    return ClassificationDataModule(cfg.data, seed=cfg.seed)


def test_digits_split_is_stratified_seeded_and_disjoint():
    a, b = load_splits("digits"), load_splits("digits")
    sizes = (len(a.train), len(a.val), len(a.test))
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=1)
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.train.images, b.train.images)
    counts = torch.bincount(a.test.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    x, y = a.train[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    other = load_splits({"name": "digits", "split_seed": 1})
    assert not torch.equal(a.test.labels, other.test.labels)


def test_digits_resize():
    splits = load_splits({"name": "digits", "image_size": 16})
    assert splits.input_shape == (1, 16, 16) and splits.train[0][0].shape == (1, 16, 16)


def test_input_statistics_come_from_the_train_split_only():
    dm = datamodule()
    mean, std = dm.input_statistics()
    train = dm.load().train.images
    assert torch.allclose(mean, train.mean().reshape(1), atol=1e-5)
    assert torch.allclose(std, train.std(unbiased=False).reshape(1), atol=1e-5)


def test_augmentation_by_name_applies_to_training_only():
    dm = datamodule(
        "data.augment=[{name: random_crop, padding: 2}, horizontal_flip, "
        "{name: color_jitter, brightness: 0.5, contrast: 0.5, saturation: 0}, trivial_augment]"
    )
    splits = dm.load()
    x, _ = splits.train[0]
    assert x.shape == (1, 8, 8) and splits.train.transform is not None and splits.val.transform is None
    rrc = datamodule("data.augment=[random_resized_crop]").load().train[0][0]
    assert rrc.shape == (1, 8, 8)


def test_crop_padding_and_cutout_length_follow_the_input_size():
    """CIFAR's 4 px padding and 8 px cutout at 32 px; an 8x8 digit gets 1 px and 2 px, not a blank image."""

    def transforms(*overrides):
        dm = datamodule(*overrides)
        dm.load()
        return dm.transforms

    small = transforms("data.augment=[random_crop, cutout]")
    assert small[0].padding == [1, 1, 1, 1] and small[1].length == 2
    large = transforms("data.dataset={name: digits, image_size: 32}", "data.augment=[random_crop, cutout]")
    assert large[0].padding == [4, 4, 4, 4] and large[1].length == 8
    assert transforms("data.augment=[{name: cutout, length: 3}]")[0].length == 3


def test_training_loader_drops_the_last_batch_and_eval_keeps_everything():
    dm = datamodule("data.batch_size=100", "data.eval_batch_size=1000")
    n_train = len(dm.load().train)
    assert all(len(y) == 100 for _, y in dm.train_dataloader())
    assert len(dm.train_dataloader()) == n_train // 100
    assert sum(len(y) for _, y in dm.val_dataloader()) == len(dm.load().val)
    assert dm.steps_per_epoch() == n_train // 100
    with pytest.raises(ConfigError, match="larger than the training split"):
        datamodule("data.batch_size=5000").train_dataloader()


def test_global_batch_is_divided_over_processes_and_accumulation(monkeypatch):
    dm = datamodule("data.batch_size=64")
    monkeypatch.setattr(ClassificationDataModule, "_layout", lambda self: (2, 1, 2))
    assert dm.per_device(64) == 16
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 16
    assert dm.steps_per_epoch(2, 2) == (-(-len(dm.load().train) // 2) // 16) // 2
    val = list(dm.val_dataloader())  # rank 1's unpadded shard: samples 1, 3, 5, ...
    assert sum(len(y) for _, y in val) == len(dm.load().val) // 2
    with pytest.raises(
        ConfigError,
        match="must divide evenly by world size 2 x trainer.accumulate_grad_batches 2 "
        "= 4; use a multiple of 4, e.g. 64",
    ):
        dm.per_device(62)


def test_torchvision_dataset_missing_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="data root '.*nowhere' does not exist"):
        load_splits({"name": "mnist", "root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="no data found under .*cifar-10-batches-py.*download=true"):
        load_splits({"name": "cifar10", "root": str(tmp_path)})


def offline(monkeypatch, response=None):
    """No network, as on a machine without one: every URL torchvision opens fails to resolve (or, with
    ``response``, answers with it)."""
    import urllib.error
    import urllib.request

    def urlopen(request, *args, **kwargs):
        if response is None:
            raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))
        return response(request.full_url)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


@pytest.mark.parametrize(
    "name, tv_class, where", [("mnist", "MNIST", "data/MNIST/raw"), ("cifar10", "CIFAR10", "data/cifar-10-batches-py")]
)
def test_a_failed_download_says_so_in_one_line_and_leaves_nothing_behind(
    monkeypatch, capsys, tmp_path, name, tv_class, where
):
    from cnnkit.cli import main
    from tests.conftest import QUICKSTART, SMOKE

    offline(monkeypatch)
    spec = f"data.dataset={{name: {name}, download: true}}"
    assert main(["fit", "--config", QUICKSTART, "--config", SMOKE, spec]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cnnkit: error: downloading {tv_class} into 'data' failed: ")
    assert "<urlopen error [Errno -3] Temporary failure in name resolution>" in lines[0]
    assert lines[0].endswith(
        f"; check the network (or proxy), or copy the files into '{where}' and set data.dataset.download=false"
    )
    assert lines[0].count("urlopen error") == 1  # torchvision's every mirror, said once
    assert list(tmp_path.iterdir()) == []  # no data/, no empty data/MNIST/raw, no run directory


def test_a_download_cut_off_midway_removes_its_partial_file_and_keeps_the_users(monkeypatch, tmp_path):
    import io

    class CutOff(io.BytesIO):
        """A server that sends 100 bytes of a file, then drops the connection."""

        def __init__(self, url):
            super().__init__(b"x" * 100)
            self.url, self.length = url, 10_000

        def read(self, size=-1):
            if self.tell() == 100:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(size)

    offline(monkeypatch, CutOff)
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (tmp_path / "data" / "notes.txt").write_text("mine")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"a file the user put there")
    with pytest.raises(DataError, match=r"^downloading MNIST into '.*data' failed: .*Connection reset by peer"):
        load_splits({"name": "mnist", "root": str(tmp_path / "data"), "download": True})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "data",
        "data/MNIST",
        "data/MNIST/raw",
        "data/MNIST/raw/t10k-labels-idx1-ubyte.gz",
        "data/notes.txt",
    ]


def make_image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_class_dirs(tmp_path):
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            for i in range(3):
                make_image(tmp_path / split / name / f"{i}.png", 40 * c + i)
    splits = load_splits({"name": "image_folder", "root": str(tmp_path), "image_size": 16})
    assert splits.class_names == ["cat", "dog"] and splits.test is None
    x, y = splits.train[4]
    assert x.shape == (3, 16, 16) and int(y) == 1
    gray = load_splits({"name": "image_folder", "root": str(tmp_path), "image_size": [8, 6], "channels": 1})
    assert gray.val[0][0].shape == (1, 8, 6)
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="class folder '.*emu' has no images"):
        load_splits({"name": "image_folder", "root": str(tmp_path)})


def test_image_folder_label_prefix(tmp_path):
    for split in ("training", "validation"):
        for label in (0, 3, 10):
            make_image(tmp_path / split / f"{label}_{split}.jpg", 10 * label)
    splits = load_splits(
        {
            "name": "image_folder",
            "root": str(tmp_path),
            "layout": "label_prefix",
            "splits": {"train": "training", "val": "validation"},
        }
    )
    assert splits.class_names == ["0", "3", "10"]
    labels = {path.rsplit("/", 1)[1]: label for path, label in splits.train.items}
    assert labels == {"0_training.jpg": 0, "3_training.jpg": 1, "10_training.jpg": 2}
    (tmp_path / "training" / "unlabeled.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="unlabeled.jpg' does not start with '<label>_'"):
        load_splits(
            {
                "name": "image_folder",
                "root": str(tmp_path),
                "layout": "label_prefix",
                "splits": {"train": "training", "val": "validation"},
            }
        )


def test_image_folder_missing_root_and_unreadable_image(tmp_path):
    with pytest.raises(DataError, match="data root '.*absent' does not exist"):
        load_splits({"name": "image_folder", "root": str(tmp_path / "absent")})
    for split in ("train", "val"):
        make_image(tmp_path / split / "a" / "ok.png", 1)
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"garbage")
    splits = load_splits({"name": "image_folder", "root": str(tmp_path)})
    with pytest.raises(DataError, match="cannot read image '.*bad.png'"):
        [splits.train[i] for i in range(len(splits.train))]


def test_dataset_info_needs_no_data(tmp_path):
    assert DATASETS.build({"name": "cifar10", "root": str(tmp_path / "absent")}).info().as_dict() == {
        "input_shape": [3, 32, 32],
        "num_classes": 10,
        "class_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    }
    assert DATASETS.build({"name": "mnist", "image_size": 32}).info().input_shape == (1, 32, 32)
    folder = DATASETS.build({"name": "image_folder", "root": str(tmp_path), "image_size": 128, "num_classes": 11})
    assert folder.info().input_shape == (3, 128, 128) and folder.info().num_classes == 11


def test_image_folder_num_classes_must_match(tmp_path):
    for split in ("train", "val"):
        make_image(tmp_path / split / "a" / "x.png", 1)
    with pytest.raises(DataError, match="num_classes=3 but .* has 1 classes"):
        load_splits({"name": "image_folder", "root": str(tmp_path), "num_classes": 3})


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_image_is_named_without_torchvisions_source_location(tmp_path, suffix):
    from PIL import Image

    from cnnkit.data.image_files import ImageFiles
    from cnnkit.errors import DataError

    path = tmp_path / f"cut{suffix}"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        ImageFiles([(str(path), 0)], (8, 8), 3, "train").load(0)
    message = str(caught.value)
    assert f"cannot read image '{path}' (" in message and ".cpp" not in message and "operator()" not in message
    assert "corrupted" in message or "truncated" in message


def gray_digits_folder(root, size=(28, 28), mode="L"):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("3", "7"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new(mode, size, 40 * i).save(folder / f"{i}.png")
    return root


def test_an_image_folder_takes_its_images_own_size_and_channels(tmp_path, capsys):
    from cnnkit.config.load import load_config

    root = gray_digits_folder(tmp_path / "mnist_like")
    cfg = load_config([], [f"data.dataset={{name: image_folder, root: {root}}}"])
    assert cnnkit.build_datamodule(cfg).load().train[0][0].shape == (1, 28, 28)
    assert "input 1x28x28" in capsys.readouterr().out
    described = cnnkit.describe(load_config([], [f"data.dataset={{name: image_folder, root: {root}, num_classes: 2}}"]))
    assert described["input_shape"] == [1, 28, 28] and "input 1x28x28" in capsys.readouterr().out
    explicit = load_config([], [f"data.dataset={{name: image_folder, root: {root}, image_size: 16, channels: 3}}"])
    assert cnnkit.data_info(explicit).input_shape == (3, 16, 16)
    assert "cnnkit: image_folder" not in capsys.readouterr().out  # nothing inferred, nothing said


def test_photos_of_mixed_sizes_are_resized_to_64(tmp_path, capsys):
    from PIL import Image

    root = gray_digits_folder(tmp_path / "photos", size=(40, 30), mode="RGB")
    Image.new("RGB", (50, 20)).save(root / "train/3/odd.png")
    info = cnnkit.data_info(cnnkit.load_config([], [f"data.dataset={{name: image_folder, root: {root}}}"]))
    assert info.input_shape == (3, 64, 64)
    assert "sizes differ (40x30, 50x20, ...): resized to 64x64" in capsys.readouterr().out
