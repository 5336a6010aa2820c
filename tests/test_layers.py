import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.nn.layers.blocks import ConvNormAct, LinearNormAct
from cnnkit.nn.layers.input_norm import InputStandardize, channel_statistics
from cnnkit.nn.layers.norms import ChannelLayerNorm
from cnnkit.nn.model import build_classifier
from cnnkit.registry import ACTIVATIONS, BACKBONES, INITS, NORMS, POOLINGS

EXPECTED_ORDER = {
    "none": ["conv", "act"],
    "input": ["conv", "act"],
    "bn_pre": ["conv", "norm", "act"],
    "bn_post": ["conv", "act", "norm"],
    "gn": ["conv", "norm", "act"],
    "ln": ["conv", "norm", "act"],
}


@pytest.mark.parametrize("norm_name", sorted(EXPECTED_ORDER))
def test_each_norm_places_its_layer_in_its_order(norm_name):
    norm = NORMS.build(norm_name)
    block = ConvNormAct(3, 8, norm=norm, act=nn.ReLU, bias="auto")
    assert [name for name, _ in block.named_children()] == EXPECTED_ORDER[norm_name]
    linear = LinearNormAct(4, 6, norm=norm, act=nn.ReLU, bias="auto")
    assert [name for name, _ in linear.named_children()] == ["linear"] + EXPECTED_ORDER[norm_name][1:]
    out = block(torch.randn(4, 3, 5, 5))
    assert out.shape == (4, 8, 5, 5)


def test_norm_layers_are_the_expected_types_and_bn_starts_at_identity():
    bn = ConvNormAct(3, 8, norm=NORMS.build({"name": "bn_pre", "momentum": 0.01, "eps": 1e-3}), act=nn.ReLU).norm
    assert isinstance(bn, nn.BatchNorm2d) and bn.momentum == 0.01 and bn.eps == 1e-3
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert isinstance(LinearNormAct(4, 6, norm=NORMS.build("bn_post"), act=nn.ReLU).norm, nn.BatchNorm1d)
    assert isinstance(ConvNormAct(3, 8, norm=NORMS.build("gn"), act=nn.ReLU).norm, nn.GroupNorm)
    assert isinstance(ConvNormAct(3, 8, norm=NORMS.build("ln"), act=nn.ReLU).norm, ChannelLayerNorm)


def test_channel_layernorm_normalizes_over_channels_per_position():
    x = torch.randn(2, 5, 3, 3) * 4 + 2
    y = ChannelLayerNorm(5)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5)


def test_bias_auto_drops_only_where_a_norm_directly_follows():
    def conv_bias(norm, bias="auto"):
        return ConvNormAct(3, 4, norm=NORMS.build(norm), act=nn.ReLU, bias=bias).conv.bias is not None

    assert not conv_bias("bn_pre")
    assert conv_bias("bn_post")  # the activation sits between
    assert conv_bias("none")
    assert conv_bias("bn_pre", bias="true")
    assert not conv_bias("none", bias=False)
    with pytest.raises(ConfigError):
        conv_bias("none", bias="maybe")


def test_norm_traits_and_bn_momentum_validation():
    assert NORMS.get("none").standardize_inputs is False
    assert NORMS.get("input").standardize_inputs is True
    assert NORMS.get("bn_pre").batch_stats and NORMS.get("bn_post").batch_stats
    assert not NORMS.get("gn").batch_stats
    assert NORMS.get("bn_post").order == "post"
    with pytest.raises(ConfigError, match="momentum must be in \\[0, 1\\]"):
        NORMS.build({"name": "bn_pre", "momentum": 1.5})


def _model(norm, input_shape=(1, 8, 8), backbone="simple_cnn"):
    cfg = OmegaConf.create(
        {"backbone": backbone, "norm": norm, "act": "relu", "pool": "max", "init": "default", "bias": "auto"}
    )
    return build_classifier(cfg, input_shape, 10)


def test_input_standardization_only_for_schemes_that_ask_for_it():
    assert isinstance(_model("none").input_norm, nn.Identity)
    for norm in ("input", "bn_pre", "bn_post"):
        assert isinstance(_model(norm).input_norm, InputStandardize)


def test_input_statistics_per_channel_for_images_and_per_feature_for_vectors():
    torch.manual_seed(0)
    images = torch.rand(50, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    mean, std = channel_statistics([images[:20], images[20:]], 3)
    flat = images.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean, flat.mean(1), atol=1e-5)
    assert torch.allclose(std, flat.std(1, unbiased=False), atol=1e-5)
    layer = InputStandardize((3, 4, 4))
    layer.set_statistics(mean, std)
    out = layer(images).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(out.mean(1), torch.zeros(3), atol=1e-4)
    tabular = torch.randn(100, 2) * torch.tensor([1.0, 100.0])
    tabular[:, 0] = 5.0  # a constant feature
    t_mean, t_std = channel_statistics([tabular], 2)
    vec = InputStandardize((2,))
    vec.set_statistics(t_mean, t_std)
    # plain floats: pytest >= 9.2 cannot take a 0-d tensor as approx's expected value with a tolerance
    assert vec.std[0].item() == pytest.approx(1e-3)
    assert vec.std[1].item() == pytest.approx(tabular[:, 1].std(unbiased=False).item(), rel=1e-4)
    assert "mean" in dict(vec.named_buffers()) and "std" in vec.state_dict()


def test_bn_eval_uses_running_statistics_and_batch_mode_leaves_buffers_alone():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    for _ in range(5):
        bn(torch.randn(16, 3) * 2 + 1)
    bn.eval()
    x = torch.randn(4, 3)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(bn(x), expected, atol=1e-6)
    buffers = {k: v.clone() for k, v in bn.state_dict().items()}
    model = nn.Sequential(bn)
    with batch_statistics(model):
        y = model(x)
        one = model(x[:1])  # a batch of one is defined: BN1d outputs beta
    assert torch.allclose(y, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps), atol=1e-5)
    assert torch.allclose(one, bn.bias.expand_as(one))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert torch.allclose(model(x), expected, atol=1e-6)  # restored afterwards


def test_poolings():
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(POOLINGS.build("min", kernel_size=2)(x), -nn.functional.max_pool2d(-x, 2))
    assert POOLINGS.build("avg", kernel_size=2)(x).shape == (1, 2, 2, 2)
    assert torch.equal(POOLINGS.build("none", kernel_size=2)(x), x)


def test_activations():
    x = torch.linspace(-2, 2, 5)
    for name, fn in (
        ("relu", torch.relu),
        ("sigmoid", torch.sigmoid),
        ("tanh", torch.tanh),
        ("gelu", nn.functional.gelu),
        ("identity", lambda t: t),
    ):
        assert torch.allclose(ACTIVATIONS.build(name)(x), fn(x))


def test_inits():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(400, 300), nn.BatchNorm1d(300))
    INITS.build({"name": "normal", "std": 0.01})(layer)
    assert layer[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(layer[0].bias == 0) and torch.all(layer[1].weight == 1)
    INITS.build("xavier")(layer)
    bound = (6 / (400 + 300)) ** 0.5
    assert layer[0].weight.abs().max() <= bound and layer[0].weight.abs().max() > 0.9 * bound
    INITS.build("kaiming")(layer)
    assert layer[0].weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)


@pytest.mark.parametrize("norm", ["none", "input", "bn_pre", "bn_post", "gn", "ln"])
@pytest.mark.parametrize("backbone", ["mlp", "simple_cnn"])
def test_every_backbone_with_every_norm_trains_a_step(backbone, norm):
    model = _model(norm, backbone=backbone)
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    out.sum().backward()


def test_mlp_takes_tabular_inputs_and_simple_cnn_names_its_minimum_size():
    assert _model("bn_pre", input_shape=(2,), backbone="mlp")(torch.randn(3, 2)).shape == (3, 10)
    with pytest.raises(ConfigError, match="needs inputs of at least 16x16, got 8x8"):
        _model("bn_pre", backbone={"name": "simple_cnn", "channels": [4, 4, 4, 4]})
    assert "simple_cnn" in BACKBONES and "mlp" in BACKBONES
