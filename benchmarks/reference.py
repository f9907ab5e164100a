"""The original code's training path, rebuilt as the benchmark's reference.

As the original code does it (docs/original-code.md): a Dataset returns each image as K
independent applications of the torchvision PIL pipeline, a DataLoader with worker processes
batches them, and the training process concatenates the views, runs the backbone in eager
float32, builds the relation pairs with the Python double loop over view blocks and steps
Adam; meters read `.item()` every step. Only the backbone modules are this suite's: they are
the original architectures (their initial weights match the original's bit for bit), and
Deep InfoMax's local discriminator's layers. Its path is the same loader over single flipped
images, that discriminator's original computation and the original loss.

relic-pytorch's path (version 0.4.1) is rebuilt the same way: its global and local view
transforms on PIL images in the same DataLoader, its model (online encoder + critic, a
deep-copied target), its per-pair Python loop over (target, online) views, Adam and the EMA
update after each step.

DeepCluster's path is a whole epoch: the training transform's images through
the same DataLoader, the backbone's features collected as NumPy, scikit-learn's PCA-whitening
and k-means, the original's class weights, then a training pass with the weighted loss.

For the methods that follow solo-learn (byol, simsiam, barlowtwins, vicreg, mocov3, swav,
dino) the reference is solo-learn's data path: each view's torchvision pipeline on PIL images
in the same DataLoader, and a loss read with `.item()` every step; the step itself is this
suite's method module (its heads, loss, optimizer and target update), so their rows measure
the data path.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from methods import deepinfomax

LOADER_WORKERS = 2


def relationnet_transform(mean: tuple, std: tuple) -> transforms.Compose:
    """The original relationnet/simclr pipeline (docs/original-code.md, training transforms)."""
    side = 32
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(side, scale=(0.08, 1.0), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)], p=0.8
            ),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def relic_transforms(side: int = 32) -> tuple[transforms.Compose, transforms.Compose]:
    """relic-pytorch's global and local view transforms (its aug.py): no normalisation."""

    def views(size: int, scale: tuple, solarize: bool) -> transforms.Compose:
        steps = [
            transforms.RandomResizedCrop(size, scale=scale),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.GaussianBlur(math.ceil(0.1 * side) // 2 * 2 + 1),
        ]
        return transforms.Compose(steps + [transforms.RandomSolarize(127, 0.2)] * solarize + [transforms.ToTensor()])

    return views(side, (0.1, 1.0), True), views(int(side * 3 / 7), (0.05, 1.0), False)


def deepinfomax_transform(mean: tuple, std: tuple) -> transforms.Compose:
    """The original deepinfomax pipeline (docs/original-code.md, training transforms)."""
    return transforms.Compose(
        [transforms.RandomHorizontalFlip(0.5), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


def crop_flip_transform(mean: tuple, std: tuple, side: int, padding: int) -> transforms.Compose:
    """The original standard/rotationnet/deepcluster pipeline: zero padding (docs/original-code.md)."""
    return transforms.Compose(
        [
            transforms.RandomCrop(side, padding=padding),
            transforms.RandomHorizontalFlip(0.5),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def two_view_transforms(view_groups: list, mean: tuple, std: tuple, side: int = 32) -> list[transforms.Compose]:
    """The method's views as solo-learn builds them with torchvision, one pipeline per view
    group of one view: RandomResizedCrop, flip, ColorJitter with its probability, grayscale,
    GaussianBlur and solarize with the probabilities of the method's `CropColorViews`, so that
    both sides draw views from the same distribution."""

    def pipeline(views) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(side, scale=views.crop_scale),
                transforms.RandomHorizontalFlip(),
                transforms.RandomApply([transforms.ColorJitter(*views.jitter)], p=views.jitter_p),
                transforms.RandomGrayscale(p=views.gray_p),
                transforms.RandomApply(
                    [transforms.GaussianBlur(math.ceil(0.1 * side) // 2 * 2 + 1, views.blur_sigma)], p=views.blur_p
                ),
                transforms.RandomSolarize(127, p=views.solarize_p),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    if any(group.count != 1 for group in view_groups):
        raise ValueError("the reference path builds two-view methods: one view per group")
    return [pipeline(group.views) for group in view_groups]


def lineval_transform(mean: tuple, std: tuple) -> transforms.Compose:
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class MultiViewImages(Dataset):
    """The original Multi* data sets: (raw image, K augmented views, target) per item."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform, views: int):
        self.images, self.labels, self.transform, self.views = images_hwc, labels, transform, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        raw = self.images[i]
        picture = Image.fromarray(raw)
        return raw, [self.transform(picture.copy()) for _ in range(self.views)], int(self.labels[i])


class GlobalLocalViews(Dataset):
    """relic-pytorch's ViewGenerator over an image data set: (global views + local views, target)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, global_views: int, local_views: int):
        self.images, self.labels = images_hwc, labels
        self.counts = (global_views, local_views)
        self.transforms = relic_transforms(images_hwc.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        picture = Image.fromarray(self.images[i])
        views = [transform(picture) for transform, count in zip(self.transforms, self.counts) for _ in range(count)]
        return views, int(self.labels[i])


class TwoViewImages(Dataset):
    """solo-learn's NCropAugmentation over an image data set: ([first view, second view], target)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, view_transforms):
        self.images, self.labels, self.view_transforms = images_hwc, labels, view_transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        picture = Image.fromarray(self.images[i])
        return [transform(picture) for transform in self.view_transforms], int(self.labels[i])


class SingleImages(Dataset):
    """torchvision's CIFAR10 item: (transformed PIL image, target)."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def loader(dataset: Dataset, batch_size: int, device: torch.device) -> DataLoader:
    """The original get_train_loader: shuffled, pinned memory (on a GPU), no drop_last."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=LOADER_WORKERS,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


def relation_head(feature_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(feature_size * 2, 256), nn.BatchNorm1d(256), nn.LeakyReLU(), nn.Linear(256, 1))


def loop_aggregate(features: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original `aggregate` with `cat`: a positive and a rolled negative per block pair."""
    size = features.shape[0] // K
    pairs, targets = [], []
    shift = 1
    for first in range(0, size * K, size):
        for second in range(first + size, size * K, size):
            a, b = features[first : first + size], features[second : second + size]
            pairs.append(torch.cat([a, b], 1))
            pairs.append(torch.cat([a, torch.roll(b, shifts=shift, dims=0)], 1))
            targets.append(torch.ones(size, dtype=torch.float32))
            targets.append(torch.zeros(size, dtype=torch.float32))
            shift += 1
            if shift >= size:
                shift = 1
    return torch.cat(pairs, 0), torch.cat(targets, 0)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return (alpha_t * (1 - p_t) ** gamma * bce).mean()


def simclr_loss(projections: torch.Tensor, temperature: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """The original loss on interleaved rows (2n and 2n+1 are the views of image n)."""
    norms = projections.norm(p=2, dim=1, keepdim=True)
    similarity = (projections @ projections.t()) / (norms @ norms.t()).clamp(min=eps)
    exp_similarity = torch.exp(similarity / temperature)
    rows = torch.arange(projections.shape[0], device=projections.device)
    partners = rows + 1 - 2 * (rows % 2)
    ratios = exp_similarity[partners, rows] / (exp_similarity.sum(dim=0) - math.exp(1.0 / temperature))
    return -torch.log(ratios.mean())


class Meter:
    """The original AverageMeter: the running sum of `value x n`."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int) -> None:
        self.sum += value * n
        self.count += n


def relationnet_step(backbone, head, optimizer, views, device, meters):
    K = len(views)
    x = torch.cat(views, 0).to(device)
    optimizer.zero_grad()
    features = backbone(x)
    pairs, targets = loop_aggregate(features, K)
    targets = targets.to(device)
    scores = head(pairs).squeeze()
    loss = focal_loss(scores, targets)
    loss.backward()
    optimizer.step()
    predicted = torch.round(torch.sigmoid(scores))
    accuracy = 100.0 * predicted.eq(targets.view_as(predicted)).sum() / float(len(targets))
    meters[0].update(loss.item(), len(targets))
    meters[1].update(accuracy.item(), len(targets))


def simclr_step(backbone, head, optimizer, views, device, meters):
    x = torch.stack(views, dim=1).flatten(0, 1).to(device)  # rows 2n, 2n+1: the views of image n
    optimizer.zero_grad()
    loss = simclr_loss(head(backbone(x)))
    loss.backward()
    optimizer.step()
    meters[0].update(loss.item(), x.shape[0])


class ReLICModel(nn.Module):
    """relic-pytorch's ReLIC: online encoder + critic, their deep copy as the target, and the
    learnable log-temperature and bias of 0.4.1."""

    def __init__(self, encoder: nn.Module, feature_size: int):
        super().__init__()
        critic = nn.Sequential(nn.Linear(feature_size, 512, bias=False), nn.ReLU(), nn.Linear(512, 64, bias=False))
        self.online_encoder = nn.Sequential(encoder, critic)
        self.target_encoder = copy.deepcopy(self.online_encoder).requires_grad_(False)
        self.t_prime = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def update_params(self, gamma: float) -> None:
        online = [*self.online_encoder.parameters(), *self.online_encoder.buffers()]
        for source, target in zip(online, [*self.target_encoder.parameters(), *self.target_encoder.buffers()]):
            if target.dtype in (torch.float, torch.float16):
                target.lerp_(source, 1.0 - gamma)


def relic_pair_loss(x, x_prime, t_prime, bias, alpha: float = 1.0, max_temperature: float = 5.0):
    """The package's relic_loss for one (online, target) pair (softmax form)."""
    x, x_prime = F.normalize(x, p=2, dim=-1), F.normalize(x_prime, p=2, dim=-1)
    logits = torch.mm(x, x_prime.t()) * t_prime.exp().clamp(0, max_temperature) + bias
    loss = F.cross_entropy(logits, torch.arange(x.size(0), device=x.device))
    invariance = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(logits, dim=0).t(), reduction="batchmean")
    return loss + alpha * invariance, invariance


def relic_step(model, optimizer, views, global_views, device, meters, gamma: float = 0.995):
    """One step of its train_relic: online and target projections per view, the Python loop
    over (target, online) pairs at different positions, Adam, the EMA update, .item() reads."""
    views = [view.to(device) for view in views]
    online = [model.online_encoder(view) for view in views]
    with torch.no_grad():
        target = [model.target_encoder(view) for view in views[:global_views]]
    loss, invariance, pairs = 0, 0, 0
    for i_t, target_projection in enumerate(target):
        for i_o, online_projection in enumerate(online):
            if i_t != i_o:
                pair_loss, pair_invariance = relic_pair_loss(
                    online_projection, target_projection, model.t_prime, model.bias
                )
                loss, invariance, pairs = loss + pair_loss, invariance + pair_invariance, pairs + 1
    loss, invariance = loss / pairs, invariance / pairs
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.update_params(gamma)
    meters[0].update(loss.item(), len(views[0]))
    meters[1].update(invariance.item(), len(views[0]))


class LocalDiscriminator(deepinfomax.LocalDiscriminator):
    """The original local discriminator's computation, 1x1 convs on [M, y broadcast over
    every position], with this suite's parameters (the original's layers and keys)."""

    def forward(self, y: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        grid = y[:, :, None, None].expand(-1, -1, M.shape[2], M.shape[3])
        hidden = F.relu(self.c0(torch.cat([M, grid], dim=1)))
        return self.c2(F.relu(self.c1(hidden)))


class DeepInfoMaxModel(nn.Module):
    """The original DIM as its script builds it: local (beta 1) and prior (gamma 0.1) terms."""

    def __init__(self, encoder: nn.Module, y_size: int, m_channels: int):
        super().__init__()
        self.encoder = encoder
        self.local_d = LocalDiscriminator(y_size, m_channels)
        self.prior_d = nn.Sequential(
            nn.Linear(y_size, 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 1), nn.Sigmoid()
        )


def deepinfomax_step(model, optimizer, images, device, meters, beta: float = 1.0, gamma: float = 0.1):
    """One step of its train: y and M, M' = M of the next image, the JSD local term, the
    log-form prior term minimised jointly, Adam, `.item()`."""
    images = images.to(device)
    y, M = model.encoder.forward_with_first_layer(images)
    M_prime = torch.cat((M[1:], M[0].unsqueeze(0)), dim=0)
    local = F.softplus(model.local_d(y, M_prime)).mean() + F.softplus(-model.local_d(y, M)).mean()
    prior = torch.rand_like(y)
    prior_term = -(torch.log(model.prior_d(prior)).mean() + torch.log(1.0 - model.prior_d(y)).mean())
    loss = beta * local + gamma * prior_term
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    meters[0].update(loss.item(), len(images))


def lineval_step(backbone, classifier, optimizer, images, target, device, meters):
    """StandardModel.linear_evaluation: backbone in eval mode, its output detached (not under
    no_grad, as the original), Adam on the linear layer only."""
    classification_step(lambda x: classifier(backbone(x).detach()), optimizer, images, target, device, meters)


def classification_step(forward, optimizer, images, target, device, meters, criterion=F.cross_entropy):
    """A step on the cross-entropy of `forward(images)`; loss and accuracy read with `.item()`."""
    images, target = images.to(device), target.to(device)
    logits = forward(images)
    loss = criterion(logits, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    accuracy = 100.0 * (logits.argmax(1) == target).sum() / float(len(target))
    meters[0].update(loss.item(), len(target))
    meters[1].update(accuracy.item(), len(target))


def two_view_step(method, views, device, meters, step: int) -> None:
    """One step of a two-view baseline module on loader views, its loss read every step."""
    views = [view.to(device) for view in views]
    loss = method.training_step(views, None, None).loss
    method.optimizer.zero_grad()
    loss.backward()
    method.optimizer.step()
    method.after_step(step)
    meters[0].update(loss.item(), views[0].shape[0])


def deepcluster_epoch(
    backbone, classifier, optimizer, dataset: SingleImages, clusters: int, batch_size: int, device, meters, seed: int
) -> None:
    """One epoch of its train. Its wall-clock k-means seed becomes `seed`, for
    repeatable runs, and scikit-learn >= 1.0 has no `n_jobs` (D3 in docs/original-code.md): KMeans uses every
    core through OpenMP instead. The loaders have LOADER_WORKERS, not its 8, as every row here."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    output = classifier[-1]
    with torch.no_grad():  # a new output layer; its Adam moments are kept, as the original's
        output.weight.normal_(0.0, 0.01)
        output.bias.zero_()
    backbone.eval()
    features = []
    with torch.no_grad():  # on augmented images: the dataset carries the training transform
        for images, _ in DataLoader(
            dataset, batch_size, shuffle=False, num_workers=LOADER_WORKERS, pin_memory=device.type == "cuda"
        ):
            features.append(backbone(images.to(device)).cpu().numpy())
    features = np.concatenate(features).astype("float32")
    dim = features.shape[1]
    features = PCA(n_components=dim if dim < 512 else dim // 2, whiten=True).fit_transform(features)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    kmeans = KMeans(clusters, init="k-means++", n_init=5, max_iter=30, random_state=seed).fit(features)
    pseudo_labels = kmeans.labels_.astype(np.int64)
    weights = 1.0 - np.bincount(pseudo_labels, minlength=clusters) / len(pseudo_labels)
    criterion = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).float().to(device))
    backbone.train()
    # Its ReassignedDataset augments the already augmented and normalised tensors a second
    # time through to_pil_image (D3 in docs/original-code.md); here each image is augmented once, which costs
    # a little less than the original's pass.
    reassigned = SingleImages(dataset.images, pseudo_labels, dataset.transform)
    for images, target in loader(reassigned, batch_size, device):
        classification_step(lambda x: classifier(backbone(x)), optimizer, images, target, device, meters, criterion)
