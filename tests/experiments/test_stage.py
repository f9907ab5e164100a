"""experiments/stage.py: what every stage says when it starts, and the seed it takes."""

from __future__ import annotations

import torch

from experiments.stage import stage_backbone, stored_seed


def test_a_machine_without_cuda_is_not_news_on_each_run(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stage_backbone("conv4", None, torch.device("cpu"))
    out = capsys.readouterr().out
    assert "CUDA" not in out and "GPU" not in out and "[INFO] Device type: cpu" in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    stage_backbone("conv4", None, torch.device("cpu"))
    out = capsys.readouterr().out
    assert out.count("Running on the CPU although CUDA is available") == 1 and "Found 2 GPU(s)" in out


def test_only_a_seed_a_run_could_have_used_is_taken_from_a_checkpoint():
    assert stored_seed({"seed": 7}) == 7 and stored_seed({"seed": 0}) == 0
    for planted in ({}, {"seed": -1}, {"seed": 2**31}, {"seed": True}, {"seed": 1.0}, {"seed": "1"}):
        assert stored_seed(planted) is None, planted
