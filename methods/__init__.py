"""Registry of training methods: adding one is a new file and one line here."""

from methods.barlowtwins import BarlowTwins
from methods.base import Method, StepOutput
from methods.byol import BYOL
from methods.deepcluster import DeepCluster
from methods.deepinfomax import DeepInfoMax
from methods.dino import DINO
from methods.mocov2plus import MoCoV2Plus
from methods.mocov3 import MoCoV3
from methods.nnclr import NNCLR
from methods.randomweights import RandomWeights
from methods.relationnet import RelationNet
from methods.relic import ReLIC
from methods.rotationnet import RotationNet
from methods.simclr import SimCLR
from methods.simsiam import SimSiam
from methods.standard import Standard
from methods.swav import SwAV
from methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "relationnet": RelationNet,
    "standard": Standard,
    "randomweights": RandomWeights,
    "deepcluster": DeepCluster,
    "simclr": SimCLR,
    "rotationnet": RotationNet,
    "deepinfomax": DeepInfoMax,
    "relic": ReLIC,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlowtwins": BarlowTwins,
    "vicreg": VICReg,
    "mocov2plus": MoCoV2Plus,
    "mocov3": MoCoV3,
    "nnclr": NNCLR,
    "swav": SwAV,
    "dino": DINO,
}

__all__ = ["METHODS", "Method", "StepOutput"]
