"""Registry of training methods: adding one is a new file and one line here."""
from methods.base import Method, StepOutput
from methods.deepcluster import DeepCluster
from methods.deepinfomax import DeepInfoMax
from methods.randomweights import RandomWeights
from methods.relationnet import RelationNet
from methods.relic import ReLIC
from methods.rotationnet import RotationNet
from methods.simclr import SimCLR
from methods.standard import Standard

METHODS: dict[str, type[Method]] = {
    "relationnet": RelationNet,
    "standard": Standard,
    "randomweights": RandomWeights,
    "deepcluster": DeepCluster,
    "simclr": SimCLR,
    "rotationnet": RotationNet,
    "deepinfomax": DeepInfoMax,
    "relic": ReLIC,
}

__all__ = ["METHODS", "Method", "StepOutput"]
