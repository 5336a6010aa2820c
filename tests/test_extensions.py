"""Each extension is one new file: a norm, an analysis and a file-backed dataset format from a user's package
(``imports:``), a backbone module dropped into cnnkit's backbones package. Each is seen by ``cnnkit list``,
trains in a fit, an analysis shows in the report and a dataset's files are predicted with their labels, with
nothing else edited."""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest
import torch

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.registry import BACKBONES

from .conftest import REPO, cli, run_cli, tiny_config

PACKAGE = "cnnkit_user_extensions"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package of the user's on sys.path; ``write(name, code)`` adds a module, which ends with the test."""
    root = tmp_path / "site"
    (root / PACKAGE).mkdir(parents=True)
    (root / PACKAGE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))

    def write(name: str, code: str) -> str:
        (root / PACKAGE / f"{name}.py").write_text(textwrap.dedent(code))
        return f"{PACKAGE}.{name}"

    write.root = root
    yield write
    for module in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[module]


def test_a_norm_is_one_file_of_the_users(user_package):
    module = user_package(
        "group_pre",
        '''
        """GroupNorm (4 groups) before the activation."""
        from torch import nn

        from cnnkit import NORMS, NormScheme


        @NORMS.register("group4_pre", description="GroupNorm, 4 groups, before the activation")
        class Group4Pre(NormScheme):
            order = "pre"

            def make(self, num_features, dim):
                return nn.GroupNorm(4, num_features)
    ''',
    )
    listed = cli("list", "norms", f"imports=[{module}]")
    assert listed.returncode == 0 and "group4_pre" in listed.stdout and "GroupNorm, 4 groups" in listed.stdout
    result = cnnkit.fit(tiny_config(f"imports=[{module}]", "model.norm=group4_pre"))
    assert result.status == "finished"
    model = cnnkit.build_model(tiny_config(f"imports=[{module}]", "model.norm=group4_pre"))
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules()) >= 2


def test_a_backbone_module_dropped_into_the_backbones_package_is_found(tmp_path, monkeypatch):
    """A built-in backbone is a module in cnnkit/nn/backbones/: the registry finds it by its package (here a
    second folder of that package, so the test writes nothing into the source tree)."""
    import cnnkit.nn.backbones

    folder = tmp_path / "more_backbones"
    folder.mkdir()
    (folder / "tiny_net.py").write_text(
        textwrap.dedent('''
        """A one-hidden-layer network: the smallest built-in-style backbone."""
        import math

        from cnnkit.registry import BACKBONES
        from cnnkit.nn.backbones.head import classifier_head


        @BACKBONES.register("tiny_net", traits={"min_size": 1}, description="flatten → 16 units → classes")
        def tiny_net(input_shape, num_classes, *, norm, act, bias="auto"):
            return classifier_head(math.prod(input_shape), [16], num_classes, norm=norm, act=act, bias=bias)
    ''')
    )
    monkeypatch.setattr(cnnkit.nn.backbones, "__path__", [*cnnkit.nn.backbones.__path__, str(folder)])
    monkeypatch.setattr(BACKBONES, "_builtins_loaded", False)  # as in a fresh process
    monkeypatch.delitem(sys.modules, "cnnkit.nn.backbones.tiny_net", raising=False)
    try:
        listed = cli("list", "backbones")
        assert listed.returncode == 0 and "tiny_net" in listed.stdout and "16 units" in listed.stdout
        result = cnnkit.fit(tiny_config("model.backbone=tiny_net"))
        assert result.status == "finished"
    finally:
        sys.modules.pop("cnnkit.nn.backbones.tiny_net", None)


GRAD_NORM = '''
    """The gradient norm at every optimizer step, and the largest per run in the report."""
    import lightning as L
    import torch

    from cnnkit.experiments.analyses import Analysis, register
    from cnnkit.experiments.analyses._unit import table
    from cnnkit.training.callbacks.output import RowLog


    class GradNorm(L.Callback):
        def __init__(self):
            self.rows = RowLog("grad_norm.csv")

        def on_fit_start(self, trainer, pl_module):
            self.rows.start(trainer)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
            self.rows.add(step=trainer.global_step, grad_norm=float(torch.cat(grads).norm()))

        def on_fit_end(self, trainer, pl_module):
            self.rows.flush(trainer)


    class GradNormReport(Analysis):
        name = "grad_norm"
        files = ("grad_norm.csv",)

        def tables(self, runs, groups):
            rows = [[run.variant, f"{max(r['grad_norm'] for r in self.of(run)['grad_norm']):.4g}"] for run in runs]
            return table("Largest gradient norm", ["run", "max gradient norm"], rows)


    register(GradNormReport(), GradNorm, description="the gradient norm at every optimizer step")
'''


def test_an_analysis_is_one_file_of_the_users_listed_trained_and_reported(user_package):
    module = user_package("grad_norm", GRAD_NORM)
    for kind in ("analyses", "callbacks"):
        listed = cli("list", kind, f"imports=[{module}]")
        assert listed.returncode == 0 and "grad_norm" in listed.stdout and "every optimizer step" in listed.stdout
    result = cnnkit.fit(tiny_config(f"imports=[{module}]", "callbacks=[{name: grad_norm}]"))
    assert result.status == "finished"
    rows = (result.run_dir / "grad_norm.csv").read_text().splitlines()
    assert rows[0] == "step,grad_norm" and len(rows) == 1 + 3  # the smoke run's three steps
    largest = max(float(line.split(",")[1]) for line in rows[1:])
    # a fresh process, as a user runs it: the report imports the runs' imports: to find their analysis
    proc = run_cli(
        "report",
        str(result.run_dir.parent),
        env_extra={"PYTHONPATH": os.pathsep.join([str(REPO), str(user_package.root)])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (result.run_dir.parent / "REPORT.md").read_text()
    assert "## Largest gradient norm" in report and f"| {result.run_dir.name} | {largest:.4g} |" in report


NPY_FOLDER = '''
    """A folder of .npy arrays, one sample a file: root/<split>/<class>/<n>.npy, uint8 (channels, height, width)."""
    import os

    import numpy as np
    import torch

    from cnnkit.data.file_samples import FileSamples
    from cnnkit.data.info import DataInfo
    from cnnkit.data.source import FileSource
    from cnnkit.data.splits import DatasetSplits
    from cnnkit.registry import DATASETS


    class NpyFiles(FileSamples):
        extensions = (".npy",)

        def decode(self, index):
            return torch.from_numpy(np.load(self.items[index][0]))


    @DATASETS.register("npy_folder", description="a folder of .npy arrays, a folder per class")
    class NpyFolder(FileSource):
        def __init__(self, root):
            self.root = root

        def _split(self, split, classes=None):
            folder = os.path.join(self.root, split)
            classes = classes or sorted(os.listdir(folder))
            return classes, [(os.path.join(folder, c, f), i) for i, c in enumerate(classes)
                             for f in sorted(os.listdir(os.path.join(folder, c)))]

        def load(self):
            classes, train = self._split("train")
            shape = np.load(train[0][0]).shape
            files = {name: NpyFiles(self._split(name, classes)[1], shape[1:], shape[0], name)
                     for name in ("val", "test")}
            return DatasetSplits(NpyFiles(train, shape[1:], shape[0], "train"), files["val"], files["test"],
                                 tuple(shape), classes)

        def info(self):
            splits = self.load()
            return DataInfo.of(splits.input_shape, splits.class_names)

        def cache_root(self):
            return self.root

        def input_files(self):
            return NpyFiles

        def label_rule(self, class_names):
            return self.labels_by_folder(class_names)
'''


def _npy_folder(root, per_class):
    """Two classes a model tells apart: dark and bright 1x8x8 arrays, ``per_class[split]`` of each."""
    generator = np.random.default_rng(0)
    for split, count in per_class.items():
        for name, low in (("dark", 0), ("bright", 160)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                np.save(root / split / name / f"{i}.npy", generator.integers(low, low + 96, (1, 8, 8), dtype=np.uint8))


def test_a_file_backed_dataset_format_is_one_file_of_the_users(user_package, tmp_path):
    module = user_package("npy_folder", NPY_FOLDER)
    root = tmp_path / "arrays"
    _npy_folder(root, {"train": 40, "val": 8, "test": 8})
    listed = cli("list", "datasets", f"imports=[{module}]")
    assert listed.returncode == 0 and "npy_folder" in listed.stdout and "a folder of .npy arrays" in listed.stdout

    dataset = [f"imports=[{module}]", f"data.dataset={{name: npy_folder, root: {root}}}"]
    with pytest.raises(ConfigError, match="data.loader=tensor needs a data set held in memory"):
        tiny_config(*dataset, "data.cache=none", "data.loader=tensor")  # its traits: files, read per batch
    per_batch = cnnkit.fit(tiny_config(*dataset, "data.cache=none", "name=per_batch"))
    decoded = cnnkit.fit(tiny_config(*dataset, "data.cache=disk", "data.loader=tensor", "name=decoded"))
    assert per_batch.status == decoded.status == "finished"
    assert len(list((root / ".cnnkit-cache").glob("train-*.npy"))) == 1  # decoded once, under its cache_root

    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.uint8))
    predictions = cnnkit.predict(str(decoded.last_checkpoint), inputs=[str(root / "test"), str(tmp_path / "x.npy")])
    assert predictions.header[:5] == ["file", "class", "probability", "label", "correct"]
    labels = [row[3] for row in predictions.rows]
    assert labels == ["bright"] * 8 + ["dark"] * 8 + [""]  # by the folder each file sits in; x.npy in none
