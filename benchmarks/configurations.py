"""The benchmark's configurations: what each one trains, at which sizes, with which of this
suite's options, and the speed-up it aims for; the data's default place."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.cpu import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]

CIFAR10_EPOCH = 50_000
LINEVAL_EPOCHS = 100
DEFAULT_DATA_ROOT = os.environ.get("SSL_DATA_ROOT", str(REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Config:
    kind: str  # relationnet, simclr, relic, deepinfomax, a two-view baseline, lineval, or accuracy (fp32 against bf16)
    backbone: str
    batch: int
    views: int = 1
    options: tuple = ()  # this suite's flags for this configuration
    target: float = 0.0  # speed-up the issue asks for (0: none)
    steps: int = 12  # measured steps per side (accuracy: training steps of each run; deepcluster: epochs)
    warmup: int = 3  # unmeasured steps first (compiling happens there)
    images: int = 0  # deepcluster: the balanced subset whose whole epochs are timed
    clusters: int = 0  # deepcluster: k-means clusters


# The methods measured against solo-learn's data path (two views of one image, no multi-crop).
SOLO_LEARN_METHODS = ("byol", "simsiam", "barlowtwins", "vicreg", "mocov3", "swav", "dino")
CONFIGS = {
    "relationnet-conv4": Config("relationnet", "conv4", 64, 32, target=2.5),
    "relationnet-resnet32": Config(
        "relationnet", "resnet32", 64, 32, ("--precision", "bf16", "--compile"), 2.5, steps=4, warmup=2
    ),
    "simclr-conv4": Config("simclr", "conv4", 128, 2),
    # relic-pytorch's CIFAR-10 run: 2 global + 4 local views, batch 256, ResNet-18 (CIFAR stem).
    "relic-resnet18": Config(
        "relic", "resnet18", 256, 6, ("--precision", "bf16", "--compile", "--channels_last"), 3.0, steps=3, warmup=2
    ),
    "deepinfomax-conv4": Config("deepinfomax", "conv4", 128),
    # DeepCluster's clustering (feature pass, PCA, k-means) costs per epoch, not per step:
    # it times one epoch over a subset, after one, with 10 x CIFAR-10's classes as clusters.
    "deepcluster-conv4": Config("deepcluster", "conv4", 128, steps=1, warmup=1, images=2560, clusters=100),
    # solo-learn's CIFAR settings (batch 256, ResNet-18 with the CIFAR stem).
    **{f"{method}-resnet18": Config(method, "resnet18", 256, 2, steps=3, warmup=2) for method in SOLO_LEARN_METHODS},
    "lineval-conv4": Config("lineval", "conv4", 128, target=20.0),
    # A short relationnet run in float32 and in bf16 + compile, each scored by linear evaluation.
    "accuracy-resnet32": Config("accuracy", "resnet32", 64, 4, ("--precision", "bf16", "--compile"), steps=100),
}
# --quick: the same code paths at sizes that run in seconds (a smoke test, not a measurement).
QUICK = {
    "relationnet": dict(batch=16, views=4),
    "simclr": dict(batch=32),
    "relic": dict(batch=8),
    "deepinfomax": dict(batch=16),
    "deepcluster": dict(batch=32, images=256, clusters=10, steps=1),
    "lineval": dict(batch=64),
    "accuracy": dict(batch=16, views=2),
    **{method: dict(batch=8) for method in SOLO_LEARN_METHODS},
}
QUICK_STEPS = dict(steps=2, warmup=1)


def configured(name: str, quick: bool) -> Config:
    config = CONFIGS[name]
    return Config(**{**asdict(config), **QUICK_STEPS, **QUICK[config.kind]}) if quick else config


def suite_options(config: Config, args) -> list[str]:
    """This suite's flags: the configuration's, unless the command line names its own. A
    configuration's bf16 is for GPUs and CPUs with bfloat16 units: on another CPU bf16 runs
    in generic code hundreds of times slower than fp32, so there this suite trains in fp32."""
    if args.precision or args.compile or args.channels_last:
        options = ["--precision", args.precision or "fp32"]
        options += ["--compile"] * args.compile + ["--channels_last"] * args.channels_last
    else:
        options = list(config.options)
        if "bf16" in options and args.device == "cpu" and not cpu_has_native_bf16():
            options[options.index("bf16")] = "fp32"
    if args.quick and "--compile" in options:  # compiling takes longer than a quick run
        options.remove("--compile")
    return options
