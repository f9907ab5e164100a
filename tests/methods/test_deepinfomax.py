"""Deep InfoMax: golden terms of the original code, the stable loss, the adversarial prior
game, checkpoints, real training runs and the stage scripts end to end."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch

from backbones import build_backbone
from datasets import load_dataset
from datasets.augment import CropFlipViews
from engine.loop import Engine
from engine.plan import TrainingPlan
from experiments.cli import stage1_parser
from experiments.options import stage1_config
from methods import METHODS
from methods.base import ViewGroup
from methods.config import ConfigError
from methods.deepinfomax import DeepInfoMax, DIMDiscriminators, negatives
from methods.losses import jsd_discriminator_loss
from tests.helpers import GOLDEN, REPO
from utils.errors import UserError
from utils.seeds import seed_everything

sys.path.insert(0, str(REPO / "benchmarks"))
import reference  # noqa: E402  the original code's computations

GOLDEN_DIM = GOLDEN / "deepinfomax.pt"


def _args(*argv: str, lr: float | None = None):
    """Stage-1 flags of deepinfomax, parsed as train_unsupervised.py does."""
    return stage1_parser().parse_args(["--method", "deepinfomax", *argv, *(["--lr", str(lr)] if lr else [])])


def _from_flags(num_classes: int, *argv: str, lr: float | None = None) -> DeepInfoMax:
    """Deepinfomax on Conv-4 with stage-1 flags, built as train_unsupervised.py builds it."""
    args = _args(*argv, lr=lr)
    return DeepInfoMax(build_backbone("conv4"), num_classes, stage1_config(DeepInfoMax, args), lr=args.lr)


def _method(*argv: str, seed: int = 0, **kwargs) -> DeepInfoMax:
    torch.manual_seed(seed)
    return _from_flags(10, *argv, **kwargs)


# --- the original code's numbers -------------------------------------------------------------


def test_terms_match_the_original_code():
    golden = torch.load(GOLDEN_DIM, weights_only=True)
    discriminators = DIMDiscriminators(64, 8, alpha=0.5, beta=1.0, gamma=0.1, prior_mode="original")
    discriminators.load_state_dict(golden["state_dict"])  # strict: the original key names
    terms = discriminators(golden["y"], golden["M"], golden["M_prime"], golden["prior_sample"])
    for name in ("local", "global", "prior"):
        torch.testing.assert_close(terms[name], golden[f"{name}_term"], rtol=1e-5, atol=0)
    expected = golden["local_term"] + 0.5 * golden["global_term"] + 0.1 * golden["prior_term"]
    torch.testing.assert_close(discriminators.total(terms), expected, rtol=1e-5, atol=0)


def test_negatives_pair_each_image_with_the_next_as_the_original():
    M = torch.randn(5, 2, 3, 3)
    assert torch.equal(negatives(M), torch.cat([M[1:], M[:1]]))


def test_discriminators_exist_only_for_non_zero_weights():
    keys = DIMDiscriminators(64, 8, 0.0, 1.0, 0.1).state_dict()
    assert {key.split(".")[0] for key in keys} == {"local_d", "prior_d"}
    assert DeepInfoMax.default_lr == 1e-4 and DeepInfoMax.drop_last
    assert _method().view_groups == [ViewGroup(1, CropFlipViews(padded=False))]
    assert METHODS["deepinfomax"] is DeepInfoMax


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_local_scores_and_gradients_equal_the_original_computation(dtype, tolerance):
    torch.manual_seed(0)
    local_d = DIMDiscriminators(64, 8, 0.0, 1.0, 0.0).local_d.to(dtype)
    original = reference.LocalDiscriminator(64, 8).to(dtype)  # the original's convs on [M, y at every position]
    original.load_state_dict(local_d.state_dict())  # strict: the same parameters
    y = torch.randn(6, 64, dtype=dtype, requires_grad=True)
    M = torch.randn(6, 8, 5, 7, dtype=dtype).relu().requires_grad_()  # not square: H and W kept apart
    results = []
    for discriminator in (local_d, original):
        scores = discriminator(y, M)
        term = jsd_discriminator_loss(scores, discriminator(y, negatives(M)))
        results.append((scores, term, torch.autograd.grad(term, (y, M, *discriminator.parameters()))))
    (scores, term, gradients), (expected_scores, expected_term, expected_gradients) = results
    assert scores.shape == expected_scores.shape == (6, 1, 5, 7)
    torch.testing.assert_close(scores, expected_scores, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(term, expected_term, rtol=tolerance, atol=tolerance)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        assert gradient.abs().sum() > 0
        torch.testing.assert_close(gradient, expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


# --- the loss ----------------------------------------------------------------------------------


def test_loss_on_known_values():
    assert jsd_discriminator_loss(torch.zeros(3), torch.zeros(7)).item() == pytest.approx(2 * math.log(2))
    positive, negative = torch.tensor([2.0, -1.0]), torch.tensor([0.5])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2 + math.log1p(math.exp(0.5))
    assert jsd_discriminator_loss(positive, negative).item() == pytest.approx(expected, rel=1e-6)
    # Equal to the original's -(mean log D(u) + mean log(1 - D(y))) where that one is finite.
    logits_u, logits_y = torch.randn(50) * 3, torch.randn(50) * 3
    naive = -(torch.log(torch.sigmoid(logits_u)).mean() + torch.log(1 - torch.sigmoid(logits_y)).mean())
    torch.testing.assert_close(jsd_discriminator_loss(logits_u, logits_y), naive, rtol=1e-5, atol=1e-6)


def test_huge_logits_give_finite_loss_and_gradients():
    positive = torch.tensor([1e4, -1e4], requires_grad=True)
    negative = torch.tensor([-1e4, 1e4], requires_grad=True)
    loss = jsd_discriminator_loss(positive, negative)
    loss.backward()
    assert loss.item() == pytest.approx(1e4)  # one wrong score of 1e4 in each mean of two
    assert positive.grad.tolist() == [0.0, -0.5] and negative.grad.tolist() == [0.0, 0.5]
    assert torch.isinf(torch.log(1 - torch.sigmoid(torch.tensor(1e4))))  # the form it avoids


@pytest.mark.parametrize("mode", ["adversarial", "original"])
def test_huge_encoder_outputs_stay_finite(mode):
    torch.manual_seed(0)
    discriminators = DIMDiscriminators(64, 8, 0.5, 1.0, 0.1, mode)
    y = (torch.randn(4, 64) * 1e4).requires_grad_()
    M = (torch.randn(4, 8, 8, 8) * 1e4).requires_grad_()
    loss = discriminators.total(discriminators(y, M, negatives(M), torch.rand(4, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    for tensor in [y, M, *discriminators.parameters()]:
        assert torch.isfinite(tensor.grad).all()


# --- the adversarial prior game ------------------------------------------------------------


def _prior_only(mode: str) -> DIMDiscriminators:
    torch.manual_seed(0)
    return DIMDiscriminators(16, 2, 0.0, 0.0, 1.0, mode)


def test_adversarial_prior_reverses_the_encoder_gradient_only():
    torch.manual_seed(1)
    y, u, M = torch.randn(8, 16), torch.rand(8, 16), torch.zeros(8, 2, 4, 4)
    game = _prior_only("adversarial")
    y_game = y.clone().requires_grad_()
    game(y_game, M, M, u)["prior"].backward()

    # Manual: the discriminator's own loss on sigmoid(y), differentiated plainly.
    manual = _prior_only("adversarial")
    y_manual = y.clone().requires_grad_()
    manual_loss = jsd_discriminator_loss(manual.prior_d(u), manual.prior_d(torch.sigmoid(y_manual)))
    manual_loss.backward()
    for p_game, p_manual in zip(game.parameters(), manual.parameters()):
        torch.testing.assert_close(p_game.grad, p_manual.grad)  # D descends its loss
    torch.testing.assert_close(y_game.grad, -y_manual.grad)  # the encoder ascends it
    assert y_game.grad.abs().sum() > 0

    # A small step along each one's negative gradient: D's loss falls, then y's step raises it.
    def d_loss(model, y_value):
        with torch.no_grad():
            return jsd_discriminator_loss(model.prior_d(u), model.prior_d(torch.sigmoid(y_value))).item()

    before = d_loss(game, y)
    with torch.no_grad():
        for p in game.parameters():
            p -= 1e-2 * p.grad
    assert d_loss(game, y) < before
    assert d_loss(manual, y - 1e-1 * y_game.grad) > d_loss(manual, y)


def test_original_prior_lets_the_encoder_minimise_the_discriminator_loss():
    torch.manual_seed(1)
    y, u, M = torch.randn(8, 16), torch.rand(8, 16), torch.zeros(8, 2, 4, 4)
    joint, manual = _prior_only("original"), _prior_only("original")
    y_joint, y_manual = y.clone().requires_grad_(), y.clone().requires_grad_()
    joint(y_joint, M, M, u)["prior"].backward()
    jsd_discriminator_loss(manual.prior_d(u), manual.prior_d(y_manual)).backward()  # y unbounded
    torch.testing.assert_close(y_joint.grad, y_manual.grad)


def test_training_step_gives_the_backbone_the_reversed_prior_gradient():
    images = torch.randn(3, 3, 32, 32)
    method = _method("--dim_beta", "0", seed=3)
    torch.manual_seed(9)
    method.training_step([images], None, None).loss.backward()

    manual = _method("--dim_beta", "0", seed=3)
    torch.manual_seed(9)
    y = manual.backbone(images)
    u = torch.rand_like(y)
    d = manual.discriminators.prior_d
    (0.1 * jsd_discriminator_loss(d(u), d(torch.sigmoid(y)))).backward()
    for p_step, p_manual in zip(method.backbone.parameters(), manual.backbone.parameters()):
        torch.testing.assert_close(p_step.grad, -p_manual.grad)
    for p_step, p_manual in zip(method.discriminators.parameters(), manual.discriminators.parameters()):
        torch.testing.assert_close(p_step.grad, p_manual.grad)


# --- flags and checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--dim_beta", "-1"], "--dim_beta"),
        (["--dim_gamma", "nan"], "--dim_gamma"),
        (["--dim_alpha", "inf"], "--dim_alpha"),
        (["--dim_beta", "0", "--dim_gamma", "0"], "--dim_alpha"),
        (["--dim_prior", "foo"], "--dim_prior"),
    ],
)
def test_bad_flags_are_named_on_one_line(argv, flag, capsys):
    with pytest.raises((SystemExit, UserError)) as raised:  # bounds when parsed, rules between flags after
        stage1_config(DeepInfoMax, _args(*argv))
    problem = str(raised.value) if isinstance(raised.value, UserError) else capsys.readouterr().err.strip()
    assert flag in problem and "\n" not in problem


def test_default_config_is_valid_and_a_batch_needs_two_images():
    with pytest.raises(ConfigError, match="^alpha, beta, gamma: all zero"):
        DeepInfoMax.Config(beta=0, gamma=0)
    assert DeepInfoMax.Config() == stage1_config(DeepInfoMax, _args())
    assert DeepInfoMax.min_batch_size == 2


def test_checkpoint_keys_and_round_trip(tmp_path):
    golden_keys = set(torch.load(GOLDEN_DIM, weights_only=True)["state_dict"])
    method = _method("--dim_alpha", "0.5")
    assert set(method.checkpoint_state()["loss_fn"]) == golden_keys
    method = _method()
    method.training_step([torch.randn(2, 3, 32, 32)], None, None).loss.backward()
    method.optimizer.step()
    state = method.checkpoint_state()
    assert set(state) == {"backbone", "loss_fn", "optimizer"}
    assert set(state["loss_fn"]) == {key for key in golden_keys if not key.startswith("global_d.")}
    torch.save(state, tmp_path / "dim.tar")
    restored = _method(seed=5)
    restored.load_checkpoint_state(torch.load(tmp_path / "dim.tar", weights_only=True))
    for key, value in restored.checkpoint_state()["loss_fn"].items():
        assert torch.equal(value, state["loss_fn"][key])
    first = next(iter(restored.optimizer.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(method.optimizer.state.values()))["exp_avg"])
    with pytest.raises(UserError, match="global_d"):
        _method("--dim_alpha", "0.5").load_checkpoint_state(state)


def test_loads_a_checkpoint_in_the_original_format():
    """Backbone and loss_fn of the original code, and its PyTorch 1.4 Adam state (int steps)."""
    golden = torch.load(GOLDEN_DIM, weights_only=True)["state_dict"]
    backbone = torch.load(GOLDEN / "backbones.pt", weights_only=True)["conv4"]["state_dict"]
    loss_fn = {k: v for k, v in golden.items() if not k.startswith("global_d.")}
    method = _method()
    sizes = [len(list(method.backbone.parameters())), len(list(method.discriminators.parameters()))]
    params = list(method.parameters())
    groups = [
        {
            "lr": 1e-4,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0,
            "amsgrad": False,
            "params": list(range(start, start + size)),
        }
        for start, size in ((0, sizes[0]), sizes)
    ]
    optimizer = {
        "state": {
            i: {"step": 7, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            for i, p in enumerate(params)
        },
        "param_groups": groups,
    }
    method.load_checkpoint_state({"backbone": backbone, "loss_fn": loss_fn, "optimizer": optimizer})
    assert torch.equal(method.discriminators.local_d.c0.weight, golden["local_d.c0.weight"])
    method.training_step([torch.randn(2, 3, 32, 32)], None, None).loss.backward()
    method.optimizer.step()  # the old state is usable
    assert int(method.optimizer.state[method.discriminators.prior_d.l2.bias]["step"]) == 8


# --- real training ----------------------------------------------------------------------------


def _fit(data, folder, seed, epochs, batch, *argv, lr=None):
    seed_everything(seed)
    method = _from_flags(data.num_classes, *argv, lr=lr)
    plan = TrainingPlan(
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        log_path=folder / "log.csv",
        checkpoint_paths=lambda e: [],
        extra_state={},
        drop_last=method.drop_last,
    )
    Engine(method, data, plan, torch.device("cpu")).fit()
    with open(folder / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def real_images(cifar10_root):
    return load_dataset("cifar10", "train", cifar10_root, download=False)


def test_learns_on_real_images(real_images, tmp_path):
    # 6 epochs x 8 steps of 8 images; lr 1e-3 (10x the default) so that 48 steps show it.
    rows = _fit(real_images.balanced_subset(64, seed=0), tmp_path, 1, 6, 8, lr=1e-3)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    local = [float(r["local"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    assert local[0] == pytest.approx(2 * math.log(2), abs=0.1)  # untrained: scores near 0
    assert local[-1] < local[0] - 0.1, local
    assert loss[-1] < loss[0] - 0.1, loss
    assert all(math.isfinite(value) for value in loss)
    assert float(rows[-1]["score"]) == -loss[-1]


def test_same_seed_same_loss(real_images, tmp_path):
    subset = real_images.balanced_subset(24, seed=0)
    logs = []
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        (tmp_path / name).mkdir()
        logs.append([r["loss"] for r in _fit(subset, tmp_path / name, seed, 1, 8, "--dim_prior", "original")])
    assert logs[0] == logs[1] and logs[0] != logs[2]


# --- the stage scripts ------------------------------------------------------------------------


def _stage(script, root, out, *argv):
    command = [
        sys.executable,
        script,
        "--data_root",
        str(root),
        "--checkpoint_dir",
        str(out),
        "--no_download",
        "--device",
        "cpu",
        "--seed",
        "1",
        *argv,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_three_stages_end_to_end(small_cifar10_root, tmp_path):
    run = _stage(
        "train_unsupervised.py",
        small_cifar10_root,
        tmp_path,
        "--method",
        "deepinfomax",
        "--epochs",
        "1",
        "--data_size",
        "8",
        "--train_subset",
        "16",
    )
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "deepinfomax" / "cifar10"
    header = "deepinfomax_cifar10_conv4_seed_1"
    stage1_file = folder / f"{header}_epoch_1.tar"
    state = torch.load(stage1_file, weights_only=True)
    assert {"backbone", "loss_fn", "optimizer"} <= set(state)
    assert {key.split(".")[0] for key in state["loss_fn"]} == {"local_d", "prior_d"}
    assert state["args"]["dim_prior"] == "adversarial"
    log = (folder / f"log_{header}.csv").read_text().splitlines()
    assert log[0].startswith("epoch,loss,score") and len(log) == 2

    run = _stage(
        "train_linear_evaluation.py", small_cifar10_root, tmp_path, "--checkpoint", str(stage1_file), "--epochs", "1"
    )
    assert run.returncode == 0, run.stderr
    stage2_file = folder / f"{header}_epoch_1_linear_evaluation.tar"
    assert {"classifier", "backbone", "optimizer"} <= set(torch.load(stage2_file, weights_only=True))

    run = _stage("test.py", small_cifar10_root, tmp_path, "--checkpoint", str(stage2_file))
    assert run.returncode == 0, run.stderr
    assert "Test accuracy:" in run.stdout


def test_stage1_one_step_on_resnet8(small_cifar10_root, tmp_path):
    run = _stage(
        "train_unsupervised.py",
        small_cifar10_root,
        tmp_path,
        "--method",
        "deepinfomax",
        "--backbone",
        "resnet8",
        "--epochs",
        "1",
        "--data_size",
        "10",
        "--train_subset",
        "10",
    )
    assert run.returncode == 0, run.stderr
    state = torch.load(
        tmp_path / "deepinfomax" / "cifar10" / "deepinfomax_cifar10_resnet8_seed_1_epoch_1.tar", weights_only=True
    )
    assert state["loss_fn"]["local_d.c0.weight"].shape == (256, 64 + 16, 1, 1)  # M: 16 channels


def test_bad_flag_is_one_line_exit_2(small_cifar10_root, tmp_path):
    run = _stage("train_unsupervised.py", small_cifar10_root, tmp_path, "--method", "deepinfomax", "--dim_prior", "foo")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "argument --dim_prior: invalid choice: 'foo'" in run.stderr
    assert "Traceback" not in run.stderr
