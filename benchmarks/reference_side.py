"""The reference side of a configuration: the original code's path (`reference.py`) timed
in a worker process."""

from __future__ import annotations

import importlib.util
import itertools
import time

from configurations import SOLO_LEARN_METHODS, Config
from measuring import ChildMemory, Measurement, gpu_peak_mb, images_per_unit, load_images, peak_rss_mb, synchronize


def reference_worker(config: Config, args, children: ChildMemory) -> Measurement:
    if config.kind == "deepcluster" and importlib.util.find_spec("sklearn") is None:
        # Its PCA and k-means are scikit-learn's, which this suite does not require.
        return Measurement("", skipped="needs scikit-learn (pip install scikit-learn)")
    import reference
    import torch

    from backbones import build_backbone, resolve_stem
    from methods.heads import backbone_and_head_adam, mlp_head

    data, description = load_images(args.data_root, args.quick, config.images)
    device = torch.device(args.device)
    images_hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # torchvision's CIFAR layout
    labels = data.labels.numpy()
    mean, std, side, padding, unit = data.mean, data.std, data.side, data.padding, images_per_unit(config, data)
    del data
    torch.manual_seed(0)
    backbone = build_backbone(config.backbone, resolve_stem(config.backbone, "auto", side)).to(device)
    meters = [reference.Meter(), reference.Meter()]
    if config.kind == "lineval":
        dataset = reference.SingleImages(images_hwc, labels, reference.lineval_transform(mean, std))
        backbone.eval()
        classifier = torch.nn.Linear(backbone.feature_size, 10).to(device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)

        def step(batch):
            reference.lineval_step(backbone, classifier, optimizer, batch[0], batch[1], device, meters)
    elif config.kind == "relic":
        dataset = reference.GlobalLocalViews(images_hwc, labels, 2, config.views - 2)
        model = reference.ReLICModel(backbone, backbone.feature_size).to(device)
        optimizer = torch.optim.Adam(
            [*model.online_encoder.parameters(), model.t_prime, model.bias], lr=3e-4, weight_decay=1e-5
        )

        def step(batch):
            reference.relic_step(model, optimizer, batch[0], 2, device, meters)
    elif config.kind == "deepinfomax":
        from methods.deepinfomax import first_layer_channels

        dataset = reference.SingleImages(images_hwc, labels, reference.deepinfomax_transform(mean, std))
        model = reference.DeepInfoMaxModel(backbone, backbone.feature_size, first_layer_channels(backbone)).to(device)
        optimizer = torch.optim.Adam(
            [
                {"params": backbone.parameters(), "lr": 1e-4},
                {"params": [*model.local_d.parameters(), *model.prior_d.parameters()], "lr": 1e-4},
            ]
        )

        def step(batch):
            reference.deepinfomax_step(model, optimizer, batch[0], device, meters)
    elif config.kind == "deepcluster":
        dataset = reference.SingleImages(images_hwc, labels, reference.crop_flip_transform(mean, std, side, padding))
        classifier = mlp_head(backbone.feature_size, config.clusters).to(device)
        optimizer = backbone_and_head_adam(backbone, classifier, 1e-3)
        batches = itertools.count(1)  # a "step" is a whole epoch; its index seeds k-means: repeatable runs

        def step(epoch):
            reference.deepcluster_epoch(
                backbone, classifier, optimizer, dataset, config.clusters, config.batch, device, meters, seed=epoch
            )
    elif config.kind in SOLO_LEARN_METHODS:
        from methods import METHODS

        method = METHODS[config.kind](backbone, 10).to(device)
        dataset = reference.TwoViewImages(
            images_hwc, labels, reference.two_view_transforms(method.view_groups, mean, std, side)
        )
        method.total_steps = args.warmup + args.steps  # the schedule's length, as on_epoch_start sets it
        steps_done = []

        def step(batch):
            steps_done.append(1)
            reference.two_view_step(method, batch[0], device, meters, len(steps_done))
    else:
        transform = reference.relationnet_transform(mean, std)
        dataset = reference.MultiViewImages(images_hwc, labels, transform, config.views)
        head = (
            reference.relation_head(backbone.feature_size)
            if config.kind == "relationnet"
            else mlp_head(backbone.feature_size, 64)
        ).to(device)
        optimizer = backbone_and_head_adam(backbone, head, 1e-3)
        train_step = reference.relationnet_step if config.kind == "relationnet" else reference.simclr_step

        def step(batch):
            train_step(backbone, head, optimizer, batch[1], device, meters)

    if config.kind != "deepcluster":  # the others time steps of one epoch of the loader
        batches = iter(reference.loader(dataset, config.batch, device))
    for _ in range(args.warmup):
        step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):  # the wait for the loader is part of each step, as in training
        step(next(batches))
    synchronize(device)
    seconds = time.perf_counter() - start
    children.sample()  # while the loader workers still live, however short the run
    return Measurement(description, seconds, args.steps * unit, peak_rss_mb(), gpu_peak_mb=gpu_peak_mb(device))
