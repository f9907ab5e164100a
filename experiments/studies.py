"""The paper's experiments as data: conditions, studies (grids) and the numbers it reports.

A condition is one column of a table: which data set the backbone is trained on (stage 1),
which one it is evaluated on (stages 2 and 3), how, and for how long. A study is a grid of
conditions x methods x backbones x variants (a variant changes one hyper-parameter, such as
K), run for several seeds by `reproduce.py`.

Protocol (the paper and its code's README; docs/original-code.md): 200 epochs of stage 1 on the
training split, 100 epochs of linear evaluation on frozen features; STL-10: 300 epochs on
the unlabelled split, 20 epochs of fine-tuning on the 5K labelled images. Mini-batch 64 for
relational reasoning (K = 16 for ResNet-32 on tiny-ImageNet, 25 for ResNet-34 on STL-10,
32 otherwise), 128 for the other methods of the paper, 256 for the later baselines (the
batch of the reference each follows). `PUBLISHED` holds the numbers those references report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PAPER_METHODS = ("relationnet", "simclr", "deepcluster", "deepinfomax", "rotationnet", "standard", "randomweights")
# Methods after the paper, each trained with the settings of the reference it follows.
BASELINE_METHODS = ("relic", "byol", "simsiam", "barlowtwins", "vicreg")
# The methods recent papers compare against, with solo-learn's CIFAR settings.
MODERN_METHODS = ("mocov2plus", "mocov3", "swav", "dino", "nnclr")
ALL_METHODS = PAPER_METHODS + BASELINE_METHODS + MODERN_METHODS  # also the order of a grid's rows


@dataclass(frozen=True)
class Condition:
    name: str
    pretraining: str  # stage-1 data set
    evaluation: str  # stage-2 and stage-3 data set
    label: str  # column name in the paper's table
    finetune: bool = False
    epochs: int = 200
    evaluation_epochs: int = 100


@dataclass(frozen=True)
class Variant:
    """One value of the hyper-parameter a study varies: `options` are (field, value) pairs of the
    method's `Config` for the stage-1 run (its files get the tag as --id); a label fraction only
    changes the evaluation."""

    tag: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    label_fraction: float = 1.0


@dataclass(frozen=True)
class Study:
    description: str
    conditions: tuple[str, ...]
    backbones: tuple[str, ...]
    methods: tuple[str, ...] = PAPER_METHODS
    variants: tuple[Variant, ...] = (Variant(),)
    backbone_of: dict = field(default_factory=dict)  # condition -> backbone the paper used there
    # Stage 1 of each method that trains also trains an online linear probe (`--online_probe`),
    # whose accuracy is the one the references of the later methods publish.
    online_probe: bool = False


CONDITIONS = {
    c.name: c
    for c in [
        Condition("cifar10", "cifar10", "cifar10", "CIFAR-10"),
        Condition("cifar100", "cifar100", "cifar100", "CIFAR-100"),
        Condition("tiny", "tiny", "tiny", "tiny-ImageNet"),
        Condition("cifar10_to_cifar100", "cifar10", "cifar100", "10→100"),
        Condition("cifar100_to_cifar10", "cifar100", "cifar10", "100→10"),
        Condition("supercifar100", "cifar100", "supercifar100", "CIFAR-100-20"),
        Condition(
            "stl10_finetune", "stl10", "stl10", "STL-10 finetune", finetune=True, epochs=300, evaluation_epochs=20
        ),
        Condition("slim", "slim", "slim", "SlimageNet64"),
    ]
}

STUDIES = {
    "table1": Study(
        "Table 1: linear evaluation, domain transfer, grain and STL-10 fine-tuning (ResNet-32; ResNet-34 on STL-10)",
        ("cifar100", "tiny", "cifar10_to_cifar100", "cifar100_to_cifar10", "supercifar100", "stl10_finetune"),
        ("resnet32",),
        backbone_of={"stl10_finetune": "resnet34"},
    ),
    "cifar10": Study("CIFAR-10 linear evaluation (appendix B.1)", ("cifar10",), ("conv4",)),
    "depth": Study(
        "Depth study (appendix B.5): Conv-4, ResNet-8, ResNet-32, ResNet-56",
        ("cifar10", "cifar100", "cifar10_to_cifar100", "cifar100_to_cifar10", "supercifar100"),
        ("conv4", "resnet8", "resnet32", "resnet56"),
    ),
    "k_sweep": Study(
        "Number of augmentations K (figure 2b, Conv-4, CIFAR-10)",
        ("cifar10",),
        ("conv4",),
        ("relationnet",),
        tuple(Variant(f"K{k}", (("K", k),)) for k in (2, 4, 8, 16, 32)),
    ),
    "aggregation": Study(
        "Aggregation functions (appendix): cat, sum, mean, max",
        ("cifar10",),
        ("conv4",),
        ("relationnet",),
        tuple(Variant(a, (("aggregation", a),)) for a in ("cat", "sum", "mean", "max")),
    ),
    "semi_supervised": Study(
        "Semi-supervised linear evaluation by share of labels (figure 2c, ResNet-32)",
        ("cifar10",),
        ("resnet32",),
        variants=tuple(Variant(f"labels_{p}pct", label_fraction=p / 100) for p in (1, 10, 25, 50, 100)),
    ),
    "slim": Study(
        "SlimageNet64 (appendix; ResNet-34)", ("slim",), ("resnet34",), ("relationnet", "simclr", "rotationnet")
    ),
    "baselines": Study(
        "Today's baselines under the paper's protocol: CIFAR-10 and CIFAR-100, ResNet-18 "
        "(CIFAR stem), linear evaluation",
        ("cifar10", "cifar100"),
        ("resnet18",),
        ("relationnet", "simclr", "relic", "byol", "simsiam", "barlowtwins", "vicreg", "standard", "randomweights"),
        online_probe=True,
    ),
    "modern": Study(
        "The methods recent papers compare against beside today's baselines: CIFAR-10 and CIFAR-100, "
        "ResNet-18 (CIFAR stem), linear evaluation and online probe",
        ("cifar10", "cifar100"),
        ("resnet18",),
        ("relationnet", "simclr", *BASELINE_METHODS, *MODERN_METHODS, "standard", "randomweights"),
        online_probe=True,
    ),
}


def relationnet_k(condition: str, backbone: str) -> int:
    """K of the paper for the relation learner."""
    if condition in ("tiny", "slim"):
        return 16
    if condition == "stl10_finetune" and backbone == "resnet34":
        return 25
    return 32


@dataclass(frozen=True)
class MethodSettings:
    """How the studies train a method in stage 1: its mini-batch, and the fields of its `Config`
    they set, for a condition and backbone, as the paper did."""

    batch_size: int
    paper_options: Callable[[str, str], dict[str, Any]] = lambda condition, backbone: {}


METHOD_SETTINGS = {
    **{method: MethodSettings(128) for method in PAPER_METHODS},
    "relationnet": MethodSettings(64, lambda condition, backbone: {"K": relationnet_k(condition, backbone)}),
    **{method: MethodSettings(256) for method in BASELINE_METHODS + MODERN_METHODS},
}


_TABLE1 = {  # method -> values in the order of the table's columns
    "standard": ("65.32±0.22", "50.09±0.32", "33.98±0.71", "71.01±0.44", "76.35±0.57", "69.82±3.36"),
    "randomweights": ("7.65±0.44", "3.24±0.43", "7.65±0.44", "27.47±0.83", "16.56±0.48", None),
    "deepcluster": ("20.44±0.80", "11.64±0.21", "18.37±0.41", "43.39±1.84", "29.49±1.36", "73.37±0.55"),
    "rotationnet": ("29.02±0.18", "14.73±0.48", "27.02±0.20", "52.22±0.70", "40.45±0.39", "83.29±0.44"),
    "deepinfomax": ("24.07±0.05", "17.51±0.15", "23.73±0.04", "45.05±0.24", "33.92±0.34", "76.03±0.37"),
    "simclr": ("42.13±0.35", "25.79±0.35", "36.20±0.16", "65.59±0.76", "51.88±0.48", "89.31±0.14"),
    "relationnet": ("46.17±0.17", "30.54±0.42", "41.50±0.35", "67.81±0.42", "52.44±0.47", "89.67±0.33"),
}


def _paper_values() -> dict:
    values = {}
    columns = STUDIES["table1"].conditions
    for method, row in _TABLE1.items():
        for condition, cell in zip(columns, row):
            if cell:
                backbone = "resnet34" if condition == "stl10_finetune" else "resnet32"
                mean, std = cell.split("±")
                values[(condition, method, backbone)] = (float(mean), float(std))
    # Appendix B.1 (issue #2 of the original repository): Conv-4 most likely; no deviations.
    values[("cifar10", "relationnet", "conv4")] = (61.03, None)
    values[("cifar10", "simclr", "conv4")] = (60.43, None)
    # Main text, ResNet-32: "about" 75 and 77.
    values[("cifar10", "relationnet", "resnet32")] = (75.0, None)
    values[("cifar10", "simclr", "resnet32")] = (77.0, None)
    # Appendix, SlimageNet64 (K = 16).
    values[("slim", "relationnet", "resnet34")] = (15.8, None)
    values[("slim", "simclr", "resnet34")] = (14.3, None)
    values[("slim", "rotationnet", "resnet34")] = (7.2, None)
    return values


PAPER = _paper_values()
# Appendix B.10: top-10 retrieval accuracy on CIFAR-10 test queries.
PAPER_RETRIEVAL = {"relationnet": 67.8, "rotationnet": 47.7}


def paper_value(condition: str, method: str, backbone: str, variant: str) -> tuple[float, float | None] | None:
    """(mean, std or None) the paper reports for this cell; variants other than the paper's
    defaults (K sweep, aggregation, label shares) have no number in the text."""
    if variant not in ("", "K32", "cat", "labels_100pct"):
        return None
    return PAPER.get((condition, method, backbone))


# Published top-1 accuracies of the references the later baselines follow, ResNet-18 with the
# CIFAR stem, for the `baselines` and `modern` studies: (condition, method) -> (accuracy, source key).
SOURCES = {
    "solo-learn": "solo-learn (da Costa et al., JMLR 2022), README, CIFAR tables: its "
    "scripts/pretrain/cifar/*.yaml, 1000 epochs, batch 256; accuracy of the online linear "
    "classifier trained during pretraining on augmented views (here: 100 epochs of Adam on "
    "frozen features of un-augmented images after --epochs of stage 1)",
    "relic-pytorch": "relic-pytorch 0.4.1 README: 100 epochs, batch 256, one run; scikit-learn logistic "
    "regression on the target encoder's features (here: the linear layer of the paper; "
    "`train_linear_evaluation.py --classifier logistic` gives the package's protocol)",
}
# The column of table.md that is measured as each source's published number is, and how.
COMPARABLE = {
    "solo-learn": "online probe (%), stage 1's `--online_probe` (solo-learn's online classifier's "
    "settings); accuracy (%) is the paper's offline protocol and reads lower or higher for reasons "
    "of protocol alone",
    "relic-pytorch": "accuracy (%) of a run evaluated with `--classifier logistic` (the package's "
    "scikit-learn logistic regression on frozen features)",
}
PUBLISHED = {
    ("cifar10", "simclr"): (90.74, "solo-learn"),
    ("cifar100", "simclr"): (65.78, "solo-learn"),
    ("cifar10", "byol"): (92.58, "solo-learn"),
    ("cifar100", "byol"): (70.46, "solo-learn"),
    ("cifar10", "simsiam"): (90.51, "solo-learn"),
    ("cifar100", "simsiam"): (66.04, "solo-learn"),
    ("cifar10", "barlowtwins"): (92.10, "solo-learn"),
    ("cifar100", "barlowtwins"): (70.90, "solo-learn"),
    ("cifar10", "vicreg"): (92.07, "solo-learn"),
    ("cifar100", "vicreg"): (68.54, "solo-learn"),
    ("cifar10", "relic"): (82.53, "relic-pytorch"),
    ("cifar10", "mocov2plus"): (92.94, "solo-learn"),
    ("cifar100", "mocov2plus"): (69.89, "solo-learn"),
    ("cifar10", "mocov3"): (93.10, "solo-learn"),
    ("cifar100", "mocov3"): (68.83, "solo-learn"),
    ("cifar10", "swav"): (89.17, "solo-learn"),
    ("cifar100", "swav"): (64.88, "solo-learn"),
    ("cifar10", "dino"): (89.52, "solo-learn"),
    ("cifar100", "dino"): (66.76, "solo-learn"),
    ("cifar10", "nnclr"): (91.88, "solo-learn"),
    ("cifar100", "nnclr"): (69.62, "solo-learn"),
}


def published_value(condition: str, method: str, backbone: str) -> tuple[float, str] | None:
    """(accuracy, source key of SOURCES) a later baseline's reference reports for this cell."""
    return PUBLISHED.get((condition, method)) if backbone == "resnet18" else None
