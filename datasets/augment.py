"""Batched image augmentation on the training device, with random parameters per image,
built from a typed description of the views (`build_augmentation`).

Each pipeline mirrors a torchvision pipeline of the original code (applied there to one PIL
image at a time) but transforms a whole uint8 batch (N, 3, H, W) at once and returns
normalised float32 (N, 3, H, W). Every random number comes from the `torch.Generator`
passed in, which lives on the images' device, so a seeded generator reproduces a batch.

A method declares its views as frozen dataclasses whose fields are the parameters:
`CropColorViews` (random resized crop, flip, colour jitter, grayscale, then optionally
Gaussian blur and solarize: the self-supervised methods' views), `CropFlipViews` (zero-padded
random crop and flip by the data set's `padding`, or flip only), `NormalisedViews`
(normalisation only) and `AffineEraseViews` (flip, random affine, random erasing by the data
set's `cutout`: the original supervised STL-10 baseline). Names select views only where a
command line or a recorded argument does (`named_views`).

The geometric ops live in `datasets/augment_geometric.py`, the colour and blur ops in
`datasets/augment_photometric.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datasets.augment_geometric import (
    affine,
    erasing_side,
    random_affine_params,
    random_resized_crop_boxes,
    resized_crop_flip,
)
from datasets.augment_photometric import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    device_constant,
    gaussian_blur,
    grayscale_rgb,
)


class Views:
    """What a view group's augmentation does; the subclasses are frozen dataclasses whose
    fields are its parameters."""

    def side(self, image_side: int) -> int | None:
        """The views' side for images of `image_side` pixels (None: the images' own)."""
        return None


@dataclass(frozen=True)
class CropColorViews(Views):
    """RandomResizedCrop(scale `crop_scale`) + RandomHorizontalFlip(0.5) + ColorJitter(`jitter`:
    brightness, contrast, saturation, hue) with p `jitter_p` in a random order per image +
    RandomGrayscale(`gray_p`), then RandomApply(GaussianBlur(`blur_kernel_size` of the input
    side, sigma `blur_sigma`), `blur_p`) and RandomSolarize(127, `solarize_p`).

    The views are `size` pixels square, or `size_ratio` times the images' side (rounded down,
    as multi-crop's local views: 3/7 gives 13 px on CIFAR); neither: the images' own size.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    size: int | None = None
    size_ratio: float | None = None

    def __post_init__(self):
        for name in ("jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        if self.size is not None and self.size_ratio is not None:
            raise ValueError("give the views a size or a size_ratio, not both")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")

    @property
    def blurs_or_solarizes(self) -> bool:
        """Whether the blur and solarize step runs, and so draws its random numbers."""
        return self.blur_p > 0 or self.solarize_p > 0

    def side(self, image_side: int) -> int | None:
        if self.size_ratio is not None:
            return max(1, int(image_side * self.size_ratio))
        return self.size


@dataclass(frozen=True)
class CropFlipViews(Views):
    """RandomCrop(the data set's `padding`, zero fill) + RandomHorizontalFlip(0.5); not
    `padded`: the flip only."""

    padded: bool = True


@dataclass(frozen=True)
class NormalisedViews(Views):
    """ToTensor + Normalize: the images themselves."""


@dataclass(frozen=True)
class AffineEraseViews(Views):
    """Flip, random affine and random erasing by the data set's `cutout` scale
    (`FinetuneAugmentation`)."""


def _computes_subsets(device: torch.device) -> bool:
    return device.type == "cpu"


def _apply_where(x: torch.Tensor, mask: torch.Tensor, op, *per_image: torch.Tensor) -> torch.Tensor:
    """`x` with `op(x, *per_image)` in the images where `mask` holds.

    On the CPU only those images are computed (the ops cost per image). On a GPU the whole
    batch is computed and blended, because selecting a subset (`nonzero`) waits for the
    device; both give the same values.
    """
    if _computes_subsets(x.device):
        pick = mask.nonzero().squeeze(1)
        return x.index_copy_(0, pick, op(x.index_select(0, pick), *(p[pick] for p in per_image)))
    return torch.where(mask.view(-1, 1, 1, 1), op(x, *per_image), x)


class Augmentation:
    """Callable: uint8 (N, 3, H, W) batch and a generator on its device -> normalised float32
    (N, 3, H, W), or (N, 3, size, size) where the views ask for another `size`."""

    def __init__(self, mean: tuple, std: tuple):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.dim() != 4
            or images.shape[1] != 3
        ):
            desc = (
                f"{images.dtype} tensor of shape {tuple(images.shape)}"
                if isinstance(images, torch.Tensor)
                else type(images).__name__
            )
            raise ValueError(f"expected a uint8 tensor (N, 3, H, W), got {desc}")
        if generator.device.type != images.device.type:
            raise ValueError(f"generator is on {generator.device}, images on {images.device}")
        return self.augment(images, generator)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """In place (x - mean) / std on [0, 1]-scaled float images."""
        mean = device_constant(self.mean, x.device, x.dtype).view(1, 3, 1, 1)
        std = device_constant(self.std, x.device, x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class Normalise(Augmentation):
    """ToTensor + Normalize: no randomness."""

    def augment(self, images, generator):
        return self.normalise_(images.float().div_(255))


class CropFlip(Augmentation):
    """RandomCrop(padding, zero fill) + RandomHorizontalFlip(0.5); padding 0 is flip only."""

    def __init__(self, mean: tuple, std: tuple, padding: int = 0):
        super().__init__(mean, std)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def augment(self, images, generator):
        n, c, height, width = images.shape
        p, device = self.padding, images.device
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        padded = F.pad(images, (p, p, p, p)).flatten(2)
        rows = offsets[:, :1] + torch.arange(height, device=device)
        cols = offsets[:, 1:] + torch.arange(width, device=device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        index = (rows[:, :, None] * (width + 2 * p) + cols[:, None, :]).view(n, 1, -1)
        crops = padded.gather(2, index.expand(n, c, -1)).view(n, c, height, width)
        return self.normalise_(crops.float().div_(255))

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, padding={self.padding})"


class CropColorAugmentation(Augmentation):
    """The pipeline of `CropColorViews`: the original relationnet/simclr pipeline with its
    defaults, relic-pytorch's views and BYOL's with blur and solarize.

    All parameters of the batch are drawn first (the blur and solarize ones after the
    others, only for views that blur or solarize, and the draw of which images are blurred
    only when `blur_p` < 1, so each pipeline draws what it drew before the options that it
    does not use existed), then images are processed in chunks that stay in cache on the CPU;
    the chunk size therefore changes the result by float rounding at most (a kernel may
    vectorise batches of other sizes otherwise).
    """

    solarize_threshold = 127 / 255

    def __init__(
        self,
        mean: tuple,
        std: tuple,
        views: CropColorViews = CropColorViews(),
        chunk_size: int | None = None,
    ):
        super().__init__(mean, std)
        self.views = views
        self.chunk_size = chunk_size  # None: 256 on the CPU, the whole batch elsewhere

    def augment(self, images, generator):
        n, _, height, width = images.shape
        device = images.device
        views = self.views
        boxes = random_resized_crop_boxes(n, height, width, generator, scale=views.crop_scale)
        u = torch.rand(n, 11, generator=generator, device=device)
        flip = u[:, 0] < 0.5
        jittered = u[:, 1] < views.jitter_p
        b, c, s, h = views.jitter
        factors = torch.stack(
            (1 - b + 2 * b * u[:, 2], 1 - c + 2 * c * u[:, 3], 1 - s + 2 * s * u[:, 4], h * (2 * u[:, 5] - 1)), dim=1
        )
        order = u[:, 6:10].argsort(dim=1)  # a uniform random permutation of the 4 ops per image
        gray = u[:, 10] < views.gray_p
        if views.blurs_or_solarizes:
            extra = torch.rand(n, 2, generator=generator, device=device)
            low, high = views.blur_sigma
            sigma = low + (high - low) * extra[:, 0]
            solarized = extra[:, 1] < views.solarize_p
            blurred = torch.rand(n, generator=generator, device=device) < views.blur_p if views.blur_p < 1 else None
            kernel_size = blur_kernel_size(height)

        size = views.side(height)
        side = (height, width) if size is None else (size, size)
        out = torch.empty((n, 3, *side), dtype=torch.float32, device=device)
        chunk = self.chunk_size or (256 if device.type == "cpu" else max(n, 1))
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            x = resized_crop_flip(images[part].float().div_(255), boxes[part], flip[part], size)
            x = self._jitter(x, jittered[part], order[part], factors[part])
            x = _apply_where(x, gray[part], grayscale_rgb)
            if views.blurs_or_solarizes:
                if blurred is None:
                    x = gaussian_blur(x, kernel_size, sigma[part])
                else:
                    x = _apply_where(
                        x, blurred[part], lambda images, s: gaussian_blur(images, kernel_size, s), sigma[part]
                    )
                inverted = (x >= self.solarize_threshold) & solarized[part].view(-1, 1, 1, 1)
                x = torch.where(inverted, 1.0 - x, x)
            out[part] = self.normalise_(x)
        return out

    @staticmethod
    def _jitter(x, jittered, order, factors):
        # Round r gives each jittered image the op at position r of its own order. Brightness,
        # contrast and saturation are cheap, so they run on the whole chunk with the factor 1
        # for the other images (exactly the identity: x * 1 + y * 0 == x); hue costs as much
        # as the three together, so it runs only on the images that have it at this position.
        for position in range(4):
            op_at = torch.where(jittered, order[:, position], -1)
            for op_index, op in enumerate((adjust_brightness, adjust_contrast, adjust_saturation)):
                x = op(x, torch.where(op_at == op_index, factors[:, op_index], 1.0))
            x = _apply_where(x, op_at == 3, adjust_hue, factors[:, 3])
        return x


class FinetuneAugmentation(Augmentation):
    """RandomHorizontalFlip(0.5) -> RandomApply([RandomAffine(18, translate (0.1, 0.1),
    scale (0.9, 1.1), shear 10, bilinear, fill 0)], p 0.5) -> ToTensor -> Normalize ->
    RandomErasing(p 0.5, scale (cutout, cutout), ratio (1, 1), value 0), the original
    supervised STL-10 pipeline with current torchvision semantics.

    The warp runs on float images, where torchvision's PIL path would round to uint8 first.
    """

    degrees, translate, scale, shear = 18.0, (0.1, 0.1), (0.9, 1.1), 10.0
    affine_p = erasing_p = 0.5

    def __init__(self, mean: tuple, std: tuple, cutout: float):
        super().__init__(mean, std)
        if not 0.0 <= cutout <= 1.0:
            raise ValueError(f"cutout must be in [0, 1], got {cutout}")
        self.cutout = float(cutout)

    def augment(self, images, generator):
        n, _, height, width = images.shape
        device = images.device
        u = torch.rand(n, 5, generator=generator, device=device)
        flip, warp, erase = u[:, 0] < 0.5, u[:, 1] < self.affine_p, u[:, 2] < self.erasing_p
        params = random_affine_params(n, height, width, generator, self.degrees, self.translate, self.scale, self.shear)
        x = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images).float().div_(255)
        x = _apply_where(x, warp, affine, params)
        self.normalise_(x)
        side = erasing_side(height, width, self.cutout)
        if side:
            # floor(u * count) is randint(0, count); the clamp guards u * count rounding up.
            top = (u[:, 3] * (height - side + 1)).floor().clamp_(max=height - side)
            left = (u[:, 4] * (width - side + 1)).floor().clamp_(max=width - side)
            rows = torch.arange(height, device=device) - top[:, None]
            cols = torch.arange(width, device=device) - left[:, None]
            box = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
            x.masked_fill_((box & erase.view(-1, 1, 1)).unsqueeze(1), 0.0)
        return x

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, cutout={self.cutout})"


# The views a name selects: the supervised method's recorded `augmentation` (by data set in
# stage 1) and stage 2's `--augmentation`.
NAMED_VIEWS: dict[str, Views] = {
    "pad_crop_flip": CropFlipViews(),
    "flip_affine_erase": AffineEraseViews(),
    "standard": CropFlipViews(),
    "none": NormalisedViews(),
}


def named_views(name: str) -> Views:
    """The views of a name of `NAMED_VIEWS`."""
    if name not in NAMED_VIEWS:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(NAMED_VIEWS)}")
    return NAMED_VIEWS[name]


def build_augmentation(
    views: Views, mean: tuple, std: tuple, padding: int = 0, *, cutout: float | None = None
) -> Augmentation:
    """The batch augmentation of `views`, normalised by the data set's `mean` and `std`;
    `padding` is the data set's `RandomCrop` padding and `cutout` its `RandomErasing` scale."""
    if isinstance(views, CropColorViews):
        return CropColorAugmentation(mean, std, views)
    if isinstance(views, CropFlipViews):
        return CropFlip(mean, std, padding if views.padded else 0)
    if isinstance(views, NormalisedViews):
        return Normalise(mean, std)
    if isinstance(views, AffineEraseViews):
        if cutout is None:
            raise ValueError(
                "the flip_affine_erase (finetune) augmentation needs the data set's cutout scale, and "
                "this data set defines none (the original code has none for tiny and slim)"
            )
        return FinetuneAugmentation(mean, std, cutout)
    raise TypeError(f"no augmentation is built from a {type(views).__name__}")
