"""Numeric precision of the training step: autocast, and a gradient scaler for float16.

`fp32` (the default) leaves every number as before. `bf16` runs matrix products and
convolutions in bfloat16 under autocast: it has float32's range, so no scaling is needed,
and CPUs with AVX512-BF16/AMX and recent GPUs run it at up to twice the speed. `fp16` has a
narrow range: small gradients underflow unless the loss is scaled, so it comes with
torch.amp.GradScaler, whose state is saved in checkpoints so a resumed run scales the same.
"""

from __future__ import annotations

import contextlib

import torch

from utils.errors import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise UserError(f"--precision {name}: choose one of {', '.join(PRECISIONS)}")
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use --precision fp16"
            )
        self.name = name
        self.device_type = device.type
        self.dtype = PRECISIONS[name]
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        # The scaler skips a step whose gradients overflowed and lowers the scale; reading
        # its overflow flag makes this the one host synchronisation of an fp16 step.
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
