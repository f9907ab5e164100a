"""The online linear probe: it learns, leaves the method's training bit for bit as it is (a
momentum method's too), resumes exactly inside an epoch and refuses a damaged state."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from datasets import load_dataset
from engine.plan import PROBE_KEY
from engine.signals import RunInterrupted
from evaluation.probe import OnlineProbe, ProbeSettings
from methods import METHODS
from tests.helpers import engine_for, interrupt_at, load, one_line, read_log
from utils.errors import UserError
from utils.seeds import rng_states

PROBE_COLUMNS = ["test_probe_accuracy", "test_probe_top5"]


def shrunk(data, size: int):
    """`data` at 16 px: the same code path at a quarter of the cost."""
    return dataclasses.replace(
        data, images=F.interpolate(data.images.float(), size=16, mode="area").round().to(torch.uint8)
    )


@pytest.fixture(scope="module")
def images(small_cifar10_root):
    """64 learnable training images and the 40 test images, at 16 px."""
    train = load_dataset("cifar10", "train", small_cifar10_root, download=False).balanced_subset(64, seed=0)
    test = load_dataset("cifar10", "test", small_cifar10_root, download=False)
    return shrunk(train, 16), shrunk(test, 16)


def method(name: str, seed: int = 0):
    torch.manual_seed(seed)
    options = {"K": 2} if name == "relationnet" else {}
    if name == "byol":
        options = {"hidden": 128, "projection": 32, "predictor_hidden": 64}
    return METHODS[name](build_backbone("conv4"), 10, METHODS[name].Config(**options))


def probe(test, settings: ProbeSettings = ProbeSettings(warmup_epochs=0)) -> OnlineProbe:
    return OnlineProbe(64, 10, settings, 7, test, "test", torch.device("cpu"))


# byol: the probe reads its momentum target
@pytest.mark.parametrize("name,epochs,count", [("relationnet", 3, 64), ("byol", 2, 32)])
def test_the_probe_learns_and_leaves_the_training_bit_for_bit_as_it_is(images, tmp_path, name, epochs, count):
    train, test = images
    train = train.balanced_subset(count, seed=0)
    plain_dir, probed_dir = tmp_path / "plain", tmp_path / "probed"
    plain_dir.mkdir(), probed_dir.mkdir()
    plain = method(name)
    engine_for(plain, train, plain_dir, epochs=epochs, batch=16).fit()
    probed, online = method(name), probe(test)
    initial = [p.detach().clone() for p in online.classifier.parameters()]
    engine_for(probed, train, probed_dir, epochs=epochs, batch=16, plan_options={"probe": online}).fit()

    for key, value in plain.state_dict().items():  # backbones, heads, a target, batch-norm statistics
        assert torch.equal(value, probed.state_dict()[key]), key
    for key, value in plain.optimizer.state_dict()["state"].items():
        assert all(torch.equal(v, probed.optimizer.state_dict()["state"][key][k]) for k, v in value.items())
    plain_rows, probed_rows = read_log(plain_dir / "log.csv"), read_log(probed_dir / "log.csv")
    assert [list(row) for row in probed_rows] == [[*plain_rows[0], *PROBE_COLUMNS]] * epochs
    for plain_row, probed_row in zip(plain_rows, probed_rows, strict=True):
        assert {k: v for k, v in plain_row.items() if k != "seconds"} == {
            k: v for k, v in probed_row.items() if k in plain_row and k != "seconds"
        }
    assert not all(torch.equal(a, b) for a, b in zip(initial, online.classifier.parameters()))
    for row in probed_rows:
        assert 0 <= float(row["test_probe_accuracy"]) <= float(row["test_probe_top5"]) <= 100
    if name == "relationnet":  # 10 classes of learnable images: chance is 10%
        assert float(probed_rows[-1]["test_probe_accuracy"]) >= 20.0, probed_rows
    # Its state is in the checkpoints: the weights it has now.
    saved = load(probed_dir / f"epoch_{epochs}.tar")[PROBE_KEY]
    assert torch.equal(saved["classifier"]["weight"], online.classifier.weight)


def test_the_probe_draws_nothing_from_the_global_generators(images):
    train, test = images
    backbone = build_backbone("conv4")
    before = rng_states()
    online = probe(test)
    views = train.images[:16].float() / 255
    online.train_step(backbone, views, train.labels[:16], 0, 10, 5)
    online.scores(backbone)
    after = rng_states()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert torch.equal(before["numpy"][0], after["numpy"][0]) and before["numpy"][1:] == after["numpy"][1:]
    # The same seed draws the same weights; the warm-up starts at 3e-5.
    same_seed = OnlineProbe(64, 10, ProbeSettings(), 7, test, "test", torch.device("cpu"))
    assert torch.equal(probe(test).classifier.weight, same_seed.classifier.weight)
    warming = probe(test, ProbeSettings())
    warming.train_step(backbone, views, train.labels[:16], 0, 100, 5)
    assert warming.optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)


def test_resume_inside_an_epoch_with_the_probe_is_exact(images, tmp_path):
    train, test = images
    data = train.balanced_subset(48, seed=0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    reference = probe(test)
    engine_for(method("relationnet"), data, straight, epochs=2, batch=16, plan_options={"probe": reference}).fit()

    plan = {"rolling_checkpoint": resumed / "last.tar", "probe": probe(test)}
    stopped = engine_for(method("relationnet"), data, resumed, epochs=2, batch=16, plan_options=plan)
    interrupt_at(stopped, 1)
    with pytest.raises(RunInterrupted):
        stopped.fit()
    state = load(resumed / "last.tar")
    # Other initial weights, of the method and the probe: everything must come from the file.
    again = method("relationnet", seed=5)
    again_probe = OnlineProbe(64, 10, ProbeSettings(warmup_epochs=0), 9, test, "test", torch.device("cpu"))
    again.load_checkpoint_state(state)
    again_probe.load_state_dict(state[PROBE_KEY], resumed / "last.tar")
    plan["probe"] = again_probe
    engine_for(again, data, resumed, epochs=2, batch=16, plan_options=plan).fit(state["epoch"], state)

    for name, value in reference.classifier.state_dict().items():
        assert torch.equal(value, again_probe.classifier.state_dict()[name]), name
    reference_momenta = reference.optimizer.state_dict()["state"]
    for index, values in again_probe.optimizer.state_dict()["state"].items():
        assert torch.equal(values["momentum_buffer"], reference_momenta[index]["momentum_buffer"])
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_log(straight / "log.csv")) == strip(read_log(resumed / "log.csv"))


def test_a_damaged_probe_state_is_refused_in_one_line(images, tmp_path):
    _, test = images
    online = probe(test)
    state = online.state_dict()
    wrong_shape = {**state, "classifier": {"weight": torch.zeros(3, 64), "bias": torch.zeros(3)}}
    not_a_state = [1, 2]
    for damaged in (None, not_a_state, wrong_shape, {**state, "optimizer": {"state": {}, "param_groups": []}}):
        with pytest.raises(UserError) as refused:
            online.load_state_dict(damaged, tmp_path / "run.tar")
        assert f"{tmp_path / 'run.tar'}" in one_line(refused.value) and PROBE_KEY in str(refused.value)
    assert torch.equal(online.classifier.weight, state["classifier"]["weight"])  # untouched
