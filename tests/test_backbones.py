"""Backbones, the describe tool, and bn_scratch."""

import json

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.errors import ConfigError
from cnnkit.nn.anatomy import describe_model
from cnnkit.nn.layers.bn_scratch import ScratchBatchNorm
from cnnkit.registry import BACKBONES, NORMS, accepted_kwargs

from .conftest import SMOKE, cli

# Every registered backbone for images of any class count (digits have 10), each at the smallest digits
# size it takes: its ``min_size`` trait, or the digits' own 8x8 (image_size resizes them).
IMAGE_BACKBONES = sorted(entry.name for entry in BACKBONES.entries() if "num_classes" not in entry.traits)
MIN_SIZE = {name: max(8, BACKBONES.get_entry(name).traits["min_size"]) for name in IMAGE_BACKBONES}
NORM_NAMES = NORMS.names()


def takes(backbone, argument):
    return argument in (accepted_kwargs(BACKBONES.get(backbone)) or ())


def config_for(backbone, norm="bn_pre", size=None, *extra):
    spec = {"name": backbone, **({"width": 0.125} if takes(backbone, "width") else {})}  # slim: a quick test
    spec_text = "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
    size = size or MIN_SIZE[backbone]
    return load_config(
        [],
        [
            f"model.backbone={spec_text}",
            f"model.norm={norm}",
            f"data.dataset={{name: digits, image_size: {size}}}",
            *extra,
        ],
    )


def test_all_backbones_are_listed():
    proc = cli("list", "backbones")
    assert all(name in proc.stdout for name in BACKBONES.names())


@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_every_backbone_takes_its_declared_smallest_input_and_refuses_one_less(backbone):
    """The ``min_size`` trait is the truth (with the backbone's default arguments), and the error names it."""
    size = BACKBONES.get_entry(backbone).traits["min_size"]
    cnnkit.build_model(config_for(backbone, "bn_pre", size))
    if size > 1:
        with pytest.raises(
            ConfigError, match=f"{backbone} needs inputs of at least {size}x{size}, got {size - 1}x{size - 1}"
        ):
            cnnkit.build_model(config_for(backbone, "bn_pre", size - 1))


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_every_backbone_with_every_norm_takes_a_training_step_on_digits(backbone, norm):
    torch.manual_seed(0)
    cfg = config_for(backbone, norm)
    model = cnnkit.build_model(cfg)
    splits = cnnkit.build_datamodule(cfg).load()
    x = torch.stack([splits.train[i][0] for i in range(4)])
    y = torch.stack([splits.train[i][1] for i in range(4)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model(x).shape == (4, 10)


@pytest.mark.parametrize("backbone", ["lenet", "resnet20", "hw3_2021"])
def test_backbones_train_by_name_through_fit(backbone):
    cfg = load_config(
        [SMOKE],
        [
            f"model.backbone={backbone}",
            "model.norm=bn_scratch",
            f"data.dataset={{name: digits, image_size: {MIN_SIZE[backbone]}}}",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "data.batch_size=16",
            f"name={backbone}",
        ],
    )
    assert cnnkit.fit(cfg).status == "finished"


def course_2021():
    def block(i, o, p):
        return [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(p, p, 0)]

    return nn.Sequential(
        *block(3, 64, 2),
        *block(64, 128, 2),
        *block(128, 256, 4),
        nn.Flatten(),
        nn.Linear(256 * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 11),
    )


def course_2022():
    def block(i, o):
        return [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2, 2, 0)]

    return nn.Sequential(
        *block(3, 64),
        *block(64, 128),
        *block(128, 256),
        *block(256, 512),
        *block(512, 512),
        nn.Flatten(),
        nn.Linear(512 * 4 * 4, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Linear(512, 11),
    )


def course_config(backbone, size=128):
    return load_config(
        [],
        [
            f"model.backbone={backbone}",
            "model.norm=bn_pre",
            "model.bias=true",
            f"data.dataset={{name: image_folder, root: absent, image_size: {size}, num_classes: 11}}",
        ],
    )


@pytest.mark.parametrize("backbone, reference", [("hw3_2021", course_2021), ("hw3_2022", course_2022)])
def test_course_models_equal_the_published_ones(backbone, reference):
    ours = cnnkit.build_model(course_config(backbone)).backbone
    theirs = reference()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert [type(m) for m in ours.modules() if not list(m.children())] == [
        type(m) for m in theirs.modules() if not list(m.children())
    ]
    # defaults are the course's input and class count
    direct = BACKBONES.build(
        backbone,
        norm=cnnkit.NORMS.build("bn_pre"),
        act=nn.ReLU,
        pool=lambda kernel_size: nn.MaxPool2d(kernel_size),
        bias=True,
    )
    assert direct(torch.zeros(1, 3, 128, 128)).shape == (1, 11)


def test_course_head_follows_the_input_size():
    model = cnnkit.build_model(course_config("hw3_2022", size=64))
    assert model.backbone[1][1].linear.in_features == 512 * 2 * 2


def test_describe_hw3_2022_reproduces_the_course_shapes():
    report = cnnkit.describe(course_config("hw3_2022"))
    pools = [row["output_shape"] for row in report["layers"] if row["type"] == "MaxPool2d"]
    assert pools == [[64, 64, 64], [128, 32, 32], [256, 16, 16], [512, 8, 8], [512, 4, 4]]
    assert report["totals"]["params"] == sum(p.numel() for p in course_2022().parameters())
    assert report["totals"]["output_shape"] == [11]


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
def test_receptive_field_of_stacked_3x3_convs_is_2L_plus_1(layers):
    model = nn.Sequential(*[nn.Conv2d(1, 1, 3, 1, 1) for _ in range(layers)])
    report = describe_model(model, (1, 16, 16))
    assert report["layers"][-1]["receptive_field"] == 2 * layers + 1
    assert report["layers"][-1]["jump"] == 1


def test_receptive_field_and_jump_through_strides_and_pools():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, 1, 1))
    rows = describe_model(model, (1, 32, 32))["layers"]
    assert [(r["receptive_field"], r["jump"]) for r in rows] == [(3, 2), (5, 4), (13, 4)]


@pytest.mark.parametrize("size, k, s, p", [(8, 3, 1, 1), (9, 5, 2, 1), (32, 7, 3, 0), (13, 4, 2, 2)])
def test_output_size_formula_matches_the_forward_pass(size, k, s, p):
    conv = nn.Conv2d(1, 1, k, s, p)
    row = describe_model(conv, (1, size, size))["layers"][0]
    expected = (size + 2 * p - k) // s + 1
    assert row["output_shape"] == [1, expected, expected] == list(conv(torch.zeros(1, 1, size, size)).shape[1:])


def test_conv_parameters_do_not_depend_on_the_input_size():
    def conv_params(size):
        model = cnnkit.build_model(load_config([], [f"data.dataset={{name: digits, image_size: {size}}}"]))
        return sum(p.numel() for p in model.backbone[0].parameters()), model

    small, small_model = conv_params(8)
    large, large_model = conv_params(32)
    assert small == large
    assert sum(p.numel() for p in large_model.parameters()) > sum(p.numel() for p in small_model.parameters())


def test_describe_shows_the_saving_from_parameter_sharing():
    totals = cnnkit.describe(load_config([], []))["totals"]
    assert totals["conv_fc_equivalent_params"] > 10 * totals["conv_params"]


@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_describe_every_backbone(backbone):
    report = cnnkit.describe(config_for(backbone, "bn_pre", 32))
    model = cnnkit.build_model(config_for(backbone, "bn_pre", 32))
    assert report["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert report["totals"]["output_shape"] == [10]
    assert report["layers"][0]["receptive_field"] == 1


def test_describe_cli_json_needs_no_data():
    proc = cli(
        "describe", "data.dataset={name: cifar10, root: /no/such/root}", "model.backbone=resnet20", "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["input_shape"] == [3, 32, 32] and report["totals"]["output_shape"] == [10]
    text = cli("describe", "model.backbone=lenet", "data.dataset={name: digits, image_size: 28}")
    assert text.returncode == 0 and "parameter sharing" in text.stdout and "k/s/p" in text.stdout


@pytest.mark.parametrize("shape, reference", [((8, 5, 4, 4), nn.BatchNorm2d), ((8, 5), nn.BatchNorm1d)])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_bn_scratch_matches_torch_batchnorm(shape, reference, momentum):
    torch.manual_seed(0)
    ours, theirs = ScratchBatchNorm(5, momentum=momentum), reference(5, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
        theirs.load_state_dict(ours.state_dict())
    for step in range(5):
        for module in (ours, theirs):
            module.train(step < 4)  # the last step in eval mode
            module.zero_grad()
        x = torch.randn(*shape) * 3 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        grad = torch.randn_like(ya)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, atol=1e-5, rtol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-5, rtol=1e-5)


PLACEMENT_CASES = [(b, p) for b in IMAGE_BACKBONES for p in ((False, True) if takes(b, "preact") else (False,))]


def leaf_trace(model, x):
    """(name, module) of every leaf module, in the order the forward pass runs them."""
    trace, hooks = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: trace.append((name, m))))
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return trace


@pytest.mark.parametrize("norm", ["bn_pre", "bn_post"])
@pytest.mark.parametrize("backbone, preact", PLACEMENT_CASES)
def test_every_batchnorm_sits_on_the_side_of_the_activation_its_scheme_says(backbone, preact, norm):
    """bn_pre: weight → BN → act (pre-activation blocks: BN → act → conv); bn_post: weight → act → BN
    (act → BN → conv). Residual joins (documented in backbones/resnet.py): the post-activation block's
    activation after the addition follows the second conv's BN for every order, so it is not a neighbour
    that counts; a projection shortcut's BN has no activation."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from cnnkit.nn.backbones.resnet import BasicBlock

    spec = {
        "name": backbone,
        **({"width": 0.125} if takes(backbone, "width") else {}),
        **({"preact": True} if preact else {}),
    }
    spec_text = "{" + ", ".join(f"{k}: {str(v).lower()}" for k, v in spec.items()) + "}"
    cfg = load_config(
        [],
        [
            f"model.backbone={spec_text}",
            f"model.norm={norm}",
            f"data.dataset={{name: digits, image_size: {MIN_SIZE[backbone]}}}",
        ],
    )
    model = cnnkit.build_model(cfg).eval()
    joins = {f"{name}.act" for name, module in model.named_modules() if isinstance(module, BasicBlock)}
    trace = leaf_trace(model, torch.zeros(2, *cnnkit.data_info(cfg).input_shape))

    def act(i):
        return 0 <= i < len(trace) and isinstance(trace[i][1], nn.ReLU) and trace[i][0] not in joins

    placed, misplaced = 0, []
    for i, (name, module) in enumerate(trace):
        if isinstance(module, _BatchNorm):
            right, wrong = (i + 1, i - 1) if norm == "bn_pre" else (i - 1, i + 1)
            placed += act(right)
            if act(wrong):
                misplaced.append(f"{trace[wrong][0]} / {name}")
    assert not misplaced, f"{backbone} preact={preact} {norm}: BN on the wrong side of its activation: {misplaced}"
    assert placed >= 2  # the check saw real BN/activation pairs
