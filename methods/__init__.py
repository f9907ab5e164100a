"""Registry of training methods: adding one is a new file and one line here."""
from methods.base import Method, StepOutput
from methods.randomweights import RandomWeights
from methods.relationnet import RelationNet
from methods.standard import Standard

METHODS: dict[str, type[Method]] = {
    "relationnet": RelationNet,
    "standard": Standard,
    "randomweights": RandomWeights,
}

__all__ = ["METHODS", "Method", "StepOutput"]
