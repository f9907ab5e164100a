"""Batch-norm statistics per view inside one batched forward.

A network that sees V views of B images as one batch of V*B rows normalises them with the
statistics of all V*B (pooled). The references of most methods (solo-learn, relic-pytorch)
forward each view on its own instead, so each view is normalised with its own batch
statistics and every forward moves the running statistics once. `forward_views` gives
that result in one call: the convolutions and linear layers still run on the whole batch,
and every batch-norm layer of the network normalises each view's rows with its own
statistics, updating its running statistics view after view in order, exactly as V
separate forwards do (`num_batches_tracked` counts V batches). In eval mode, where batch
norm uses its running statistics, a forward is the plain one.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from backbones import Backbone

# The attribute of a batch-norm layer that holds how many views its input holds.
VIEWS_ATTRIBUTE = "views_per_batch"


def _view_by_view(module: _BatchNorm, rows: torch.Tensor) -> torch.Tensor:
    """The layer's forward, run on each view's rows on its own when it normalises with batch
    statistics (the same test as batch norm's own: training, or no running statistics)."""
    views: int = vars(module)[VIEWS_ATTRIBUTE]
    plain = type(module).forward
    if views == 1 or not (module.training or module.running_mean is None):
        return plain(module, rows)
    if rows.shape[0] % views:
        raise ValueError(f"{rows.shape[0]} rows cannot be split into {views} views of equal size")
    return torch.cat([plain(module, view) for view in rows.chunk(views)])


def _prepare(module: _BatchNorm) -> None:
    """Give the layer the view-by-view forward once; with one view per batch it is the plain
    forward. Installed for good rather than per call, so a compiled network sees the same
    function at every step and compiles once per number of views."""
    if VIEWS_ATTRIBUTE not in vars(module):
        vars(module)[VIEWS_ATTRIBUTE] = 1
        module.forward = types.MethodType(_view_by_view, module)  # type: ignore[method-assign]


@contextmanager
def batch_norm_per_view(network: nn.Module | Backbone, views: int) -> Iterator[None]:
    """Inside the block, every batch-norm layer of `network` treats its input as `views`
    view-major views of equal size and normalises each with its own statistics."""
    layers = [module for module in network.modules() if isinstance(module, _BatchNorm)]
    for layer in layers:
        _prepare(layer)
        vars(layer)[VIEWS_ATTRIBUTE] = views
    try:
        yield
    finally:
        for layer in layers:
            vars(layer)[VIEWS_ATTRIBUTE] = 1


def forward_views(network: nn.Module | Backbone, views: torch.Tensor, count: int, per_view: bool) -> torch.Tensor:
    """`network`'s outputs of `count` view-major views of B images each (rows v*B .. v*B+B-1
    are view v), in one forward: with `per_view`, batch norm normalises each view with its
    own statistics (as `count` forwards of one view each would); otherwise with those of all
    `count`*B rows together."""
    if not per_view or count == 1:
        return network(views)
    with batch_norm_per_view(network, count):
        return network(views)
