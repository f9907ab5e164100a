"""Backbones against the original's parameter counts, state-dict layout and golden outputs, and
ResNet-18/34/50 (both stems) against torchvision."""

import json

import pytest
import torch
import torchvision
from torch import nn

from backbones import BACKBONES, backbone_variants, build_backbone, resolve_stem
from tests.helpers import GOLDEN, one_line
from utils.errors import UserError

SMALL = ["conv4", "resnet8", "resnet32", "resnet56"]
# torchvision's counts without fc (resnet18 11,689,512 - 513,000; resnet50 25,557,032 - 2,049,000);
# the CIFAR stem's 3x3 conv has 64*3*3*3 = 1,728 weights instead of the 7x7's 9,408.
PARAMS = {
    ("conv4", None): 24_648,
    ("resnet8", None): 77_392,
    ("resnet32", None): 466_256,
    ("resnet56", None): 855_120,
    ("resnet34", None): 21_284_672,
    ("resnet18", "imagenet"): 11_176_512,
    ("resnet18", "cifar"): 11_168_832,
    ("resnet50", "imagenet"): 23_508_032,
    ("resnet50", "cifar"): 23_500_352,
}
FEATURES = {
    "conv4": 64,
    "resnet8": 64,
    "resnet32": 64,
    "resnet56": 64,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
}
FIRST_LAYER = {
    ("conv4", None): (8, 32, 32),
    ("resnet8", None): (16, 32, 32),
    ("resnet32", None): (16, 32, 32),
    ("resnet56", None): (16, 32, 32),
    ("resnet34", None): (64, 16, 16),
    ("resnet18", "imagenet"): (64, 16, 16),
    ("resnet18", "cifar"): (64, 32, 32),
    ("resnet50", "imagenet"): (64, 16, 16),
    ("resnet50", "cifar"): (64, 32, 32),
}
NAMES = {
    "conv4": "conv4",
    "resnet8": "resnet",
    "resnet32": "resnet",
    "resnet56": "resnet",
    "resnet18": "resnet_large",
    "resnet34": "resnet_large",
    "resnet50": "resnet_large",
}
TORCHVISION = [
    ("resnet34", None),
    ("resnet18", "imagenet"),
    ("resnet18", "cifar"),
    ("resnet50", "imagenet"),
    ("resnet50", "cifar"),
]


def variant_id(variant) -> str:
    name, stem = variant
    return name if stem is None else f"{name}-{stem}"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {variant: build_backbone(*variant) for variant in backbone_variants()}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "backbones.pt", weights_only=True)


def test_registry_lists_all_backbones_and_stems():
    assert set(backbone_variants()) == set(PARAMS)
    assert set(BACKBONES) == set(FEATURES)


@pytest.mark.parametrize("variant", list(PARAMS), ids=variant_id)
def test_parameter_count_feature_size_and_output_shape(models, variant):
    model = models[variant].eval()
    name = variant[0]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[variant]
    assert isinstance(model.feature_size, int) and model.feature_size == FEATURES[name]
    assert model.name == NAMES[name]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, FEATURES[name])
        if model.name == "resnet_large":
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, FEATURES[name])


def test_channels_attribute(models):
    assert models["resnet8", None].channels == [16, 32, 64]
    assert models["resnet34", None].channels == [64, 64, 128, 256, 512]
    assert models["resnet18", "cifar"].channels == [64, 64, 128, 256, 512]
    assert models["resnet50", "imagenet"].channels == [64, 256, 512, 1024, 2048]


@pytest.mark.parametrize("name", SMALL + ["resnet34"])
def test_state_dict_keys_and_shapes_match_original(models, name):
    expected = json.loads((GOLDEN / "backbone_state_dict_shapes.json").read_text())[name]
    actual = {k: list(v.shape) for k, v in models[name, None].state_dict().items()}
    assert list(actual) == list(expected)
    assert actual == expected


@pytest.mark.parametrize("name", SMALL)
def test_golden_output(golden, name):
    model = build_backbone(name)
    model.load_state_dict(golden[name]["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = model(golden[name]["input"])
    torch.testing.assert_close(out, golden[name]["output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SMALL)
def test_seeded_init_reproduces_original_init(golden, name):
    torch.manual_seed(0)
    state = build_backbone(name).state_dict()
    # The same random stream, not the same bits: normal_ takes log and cos from vectorised or
    # scalar code by CPU (ATEN_CPU_CAPABILITY=default moves weights here by up to 4 ulps of
    # the largest value). 8 such ulps are allowed; another seed or order of draws moves values by
    # about the std itself.
    for key, value in golden[name]["state_dict"].items():
        atol = 8 * torch.finfo(value.dtype).eps * value.abs().max().item() if value.is_floating_point() else 0
        torch.testing.assert_close(state[key], value, rtol=0, atol=atol, msg=key)


def test_init_is_he_fan_out_and_bn_identity(models):
    conv = models["resnet34", None].layer4[0].conv1  # 512*3*3 fan-out, large enough for a stable std
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.02)
    bn = models["conv4", None].layer2.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_cifar_stem_is_relic_pytorchs(models, name):
    model = models[name, "cifar"]
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3,
        64,
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert conv.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    # Kaiming-normal fan-out: std sqrt(2 / (64 * 3 * 3)); the sample std of 1,728 weights varies by ~2%.
    assert conv.weight.std().item() == pytest.approx((2.0 / (64 * 9)) ** 0.5, rel=0.08)
    imagenet = models[name, "imagenet"]
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)


def torchvision_model(name: str, stem: str | None) -> nn.Module:
    """Torchvision's model, with the CIFAR stem as relic-pytorch puts it in."""
    model = getattr(torchvision.models, name)()
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@pytest.mark.parametrize("variant", TORCHVISION, ids=variant_id)
def test_torchvision_state_dicts_load_and_give_the_same_features(variant):
    reference = torchvision_model(*variant).eval()
    ours = build_backbone(*variant).eval()
    assert list(ours.state_dict()) == [key for key in reference.state_dict() if not key.startswith("fc.")]
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert result.missing_keys == []
    assert set(result.unexpected_keys) == {"fc.weight", "fc.bias"}
    result = reference.load_state_dict(ours.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and result.unexpected_keys == []
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("variant", list(FIRST_LAYER), ids=variant_id)
def test_first_layer_features(models, variant):
    model = models[variant].eval()
    with torch.no_grad():
        features, first = model.forward_with_first_layer(torch.randn(3, 3, 32, 32))
    assert first.shape == (3, *FIRST_LAYER[variant])
    assert features.shape == (3, model.feature_size)
    assert first.min() >= 0  # taken after the ReLU


@pytest.mark.parametrize(
    "side,stem", [(16, "cifar"), (32, "cifar"), (33, "imagenet"), (64, "imagenet"), (96, "imagenet")]
)
def test_auto_stem_follows_the_image_size(side, stem):
    assert resolve_stem("resnet18", "auto", side) == stem
    assert resolve_stem("resnet50", "auto", side) == stem


def test_an_explicit_stem_wins_and_single_stem_backbones_have_none():
    assert resolve_stem("resnet50", "cifar", 96) == "cifar"
    assert resolve_stem("resnet18", "imagenet", 32) == "imagenet"
    for name in ("conv4", "resnet8", "resnet32", "resnet56", "resnet34"):
        assert resolve_stem(name, "auto", 96) is None


@pytest.mark.parametrize("name", ["conv4", "resnet32", "resnet34"])
def test_a_stem_for_a_single_stem_backbone_is_refused(name):
    with pytest.raises(UserError) as info:
        resolve_stem(name, "cifar", 32)
    assert one_line(info.value).startswith(f"--stem cifar: backbone {name} has a single stem; drop --stem")


def test_auto_stem_without_a_size_names_the_flags():
    with pytest.raises(UserError) as info:
        resolve_stem("resnet18", "auto", None)
    assert "--image_size" in one_line(info.value) and "--stem cifar" in str(info.value)


def test_build_backbone_wants_a_stem_exactly_where_there_is_a_choice():
    with pytest.raises(ValueError, match="'resnet18' needs a stem"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="'conv4' has a single stem"):
        build_backbone("conv4", "cifar")


def test_unknown_backbone_names_valid_choices():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'") as info:
        build_backbone("vgg")
    message = str(info.value)
    assert "\n" not in message
    for name in BACKBONES:
        assert name in message
