"""Backbones against the original's parameter counts, state-dict layout and golden outputs."""
import json

import pytest
import torch
import torchvision

from backbones import BACKBONES, build_backbone
from tests.helpers import GOLDEN

SMALL = ["conv4", "resnet8", "resnet32", "resnet56"]
PARAMS = {"conv4": 24_648, "resnet8": 77_392, "resnet32": 466_256, "resnet56": 855_120,
          "resnet34": 21_284_672}
FEATURES = {"conv4": 64, "resnet8": 64, "resnet32": 64, "resnet56": 64, "resnet34": 512}
FIRST_LAYER = {"conv4": (8, 32, 32), "resnet8": (16, 32, 32), "resnet32": (16, 32, 32),
               "resnet56": (16, 32, 32), "resnet34": (64, 16, 16)}
NAMES = {"conv4": "conv4", "resnet8": "resnet", "resnet32": "resnet", "resnet56": "resnet",
         "resnet34": "resnet_large"}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_backbone(name) for name in BACKBONES}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "backbones.pt", weights_only=True)


def test_registry_lists_all_backbones():
    assert set(BACKBONES) == set(PARAMS)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_feature_size_and_output_shape(models, name):
    model = models[name].eval()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert isinstance(model.feature_size, int) and model.feature_size == FEATURES[name]
    assert model.name == NAMES[name]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, FEATURES[name])
        if name == "resnet34":
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_channels_attribute(models):
    assert models["resnet8"].channels == [16, 32, 64]
    assert models["resnet34"].channels == [64, 64, 128, 256, 512]


@pytest.mark.parametrize("name", list(PARAMS))
def test_state_dict_keys_and_shapes_match_original(models, name):
    expected = json.loads((GOLDEN / "backbone_state_dict_shapes.json").read_text())[name]
    actual = {k: list(v.shape) for k, v in models[name].state_dict().items()}
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
    for key, value in golden[name]["state_dict"].items():
        assert torch.equal(state[key], value), key


def test_init_is_he_fan_out_and_bn_identity(models):
    conv = models["resnet34"].layer4[0].conv1  # 512*3*3 fan-out, large enough for a stable std
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.02)
    bn = models["conv4"].layer2.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_resnet34_matches_torchvision(models):
    ours = models["resnet34"].eval()
    reference = torchvision.models.resnet34()
    result = reference.load_state_dict(ours.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []
    reference.fc = torch.nn.Identity()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("name", list(PARAMS))
def test_first_layer_features(models, name):
    model = models[name].eval()
    with torch.no_grad():
        features = model.first_layer_features(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, *FIRST_LAYER[name])
    assert features.min() >= 0  # taken after the ReLU


def test_unknown_backbone_names_valid_choices():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'") as info:
        build_backbone("vgg")
    message = str(info.value)
    assert "\n" not in message
    for name in BACKBONES:
        assert name in message
