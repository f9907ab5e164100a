"""swav's and dino's pure functions against solo-learn's own code run on fixed inputs
(`tests/golden/modern.pt`, described in tests/golden/README.md): SwAV's Sinkhorn-Knopp codes
and swapped-prediction loss with its gradients (two views, and four views with codes for the
first two), DINO's loss, centre update and teacher-temperature schedule over two calls."""

from __future__ import annotations

import pytest
import torch

from methods.dino import dino_loss, teacher_temperature, updated_center
from methods.swav import sinkhorn_knopp, swapped_prediction_loss
from tests.helpers import GOLDEN

MODERN = torch.load(GOLDEN / "modern.pt", weights_only=True)
# float32 sums of a few dozen terms, and exp(score / 0.05) amplifying a score's last bit by 20:
# other CPUs' kernels stay well inside these.
RTOL, ATOL = 1e-5, 1e-7


@pytest.mark.parametrize("case", range(len(MODERN["swav"])))
def test_swav_codes_loss_and_gradients(case):
    golden = MODERN["swav"][case]
    scores = [score.clone().requires_grad_(True) for score in golden["scores"]]
    codes = [
        sinkhorn_knopp(score.detach(), golden["sinkhorn_iters"], golden["epsilon"])
        for score in scores[: len(golden["assignments"])]
    ]
    for code, expected in zip(codes, golden["assignments"], strict=True):
        torch.testing.assert_close(code, expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(code.sum(dim=1), torch.ones(len(code)))  # a distribution per sample
    loss = swapped_prediction_loss(torch.stack(scores), torch.stack(codes), golden["temperature"])
    torch.testing.assert_close(loss, golden["loss"], rtol=RTOL, atol=ATOL)
    loss.backward()
    for score, expected in zip(scores, golden["grad_scores"], strict=True):
        torch.testing.assert_close(score.grad, expected, rtol=RTOL, atol=ATOL)


def test_dino_two_calls_centre_schedule_loss_and_gradients():
    golden = MODERN["dino"]
    center = torch.zeros(1, golden["calls"][0]["student"].shape[1])
    for call in golden["calls"]:
        torch.testing.assert_close(center, call["center_before"], rtol=RTOL, atol=ATOL)
        temperature = teacher_temperature(
            call["epoch"], golden["warmup_epochs"], golden["warmup_teacher_temperature"], golden["teacher_temperature"]
        )
        assert temperature == pytest.approx(call["teacher_temperature"], rel=1e-12)
        student = call["student"].clone().requires_grad_(True)
        # 2 views x 6 images, view-major, as (views, images, prototypes)
        loss = dino_loss(
            student.unflatten(0, (2, -1)),
            call["teacher"].unflatten(0, (2, -1)),
            center,
            golden["student_temperature"],
            temperature,
        )
        torch.testing.assert_close(loss, call["loss"], rtol=RTOL, atol=ATOL)
        loss.backward()
        torch.testing.assert_close(student.grad, call["grad_student"], rtol=RTOL, atol=ATOL)
        center = updated_center(center, call["teacher"], golden["center_momentum"])
        torch.testing.assert_close(center, call["center_after"], rtol=RTOL, atol=ATOL)


def test_teacher_temperature_is_numpy_linspace_then_constant():
    numpy = pytest.importorskip("numpy")
    for warmup_epochs in (0, 1, 2, 3, 7):
        schedule = numpy.concatenate((numpy.linspace(0.04, 0.07, warmup_epochs), numpy.full(10 - warmup_epochs, 0.07)))
        assert [teacher_temperature(epoch, warmup_epochs, 0.04, 0.07) for epoch in range(10)] == schedule.tolist()
