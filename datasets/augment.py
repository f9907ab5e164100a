"""Batched image augmentation on the training device, with random parameters per image.

Each pipeline mirrors a torchvision pipeline of the original code (applied there to one PIL
image at a time) but transforms a whole uint8 batch (N, 3, H, W) at once and returns
normalised float32 (N, 3, H, W). Every random number comes from the `torch.Generator`
passed in, which lives on the images' device, so a seeded generator reproduces a batch.

Pipelines are registered by what they do (`PIPELINES`); the names the original code's
roles gave them stay valid as aliases (`ALIASES`):

    crop_color_gray    random resized crop (scale 0.08-1), flip, colour jitter, grayscale
                       (relationnet, simclr; alias "relationnet")
    crop_color_gray_blur_solarize   the same with crop scale 0.1-1, then Gaussian blur and
                       solarize with p 0.2 (relic's global views)
    crop_color_gray_blur            crop scale 0.05-1, then Gaussian blur (relic's local views)
    crop_softcolor_gray_blur        crop scale 0.08-1, the milder colour jitter of BYOL
                       (0.4, 0.4, 0.2, 0.1), Gaussian blur always (BYOL's first view; also
                       barlowtwins' and vicreg's)
    crop_softcolor_gray_blur_solarize   the same with blur p 0.1 and solarize p 0.2 (BYOL's
                       second view)
    crop_softcolor_gray_halfblur    jitter (0.4, 0.4, 0.4, 0.1), blur p 0.5 (simsiam, both views)
                       (the crop_color_gray pipelines can resize to another `size`)
    pad_crop_flip      zero-padded random crop and flip (rotationnet, deepcluster, standard;
                       alias "standard")
    flip               horizontal flip (deepinfomax)
    none               normalisation only (linear evaluation, test)
    flip_affine_erase  flip, random affine, random erasing with the data set's cutout scale
                       (the original supervised STL-10 baseline; alias "finetune")
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from utils.tensors import tensor_sum

# torchvision's rgb_to_grayscale weights, used by its ColorJitter and RandomGrayscale.
_LUMA = (0.2989, 0.587, 0.114)


@functools.lru_cache(maxsize=None)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor, made once per device: building it from Python values for
    every batch would be a host-to-device copy that waits for the GPU."""
    return torch.tensor(values, dtype=dtype, device=device)


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


def _grayscale_rgb(x: torch.Tensor) -> torch.Tensor:
    return _grayscale(x).expand(-1, 3, -1, -1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of float RGB images."""
    return (x[:, 0:1] * _LUMA[0]).add_(x[:, 1:2], alpha=_LUMA[1]).add_(x[:, 2:3], alpha=_LUMA[2])


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_brightness with one factor per image; float input in [0, 1]."""
    return x.mul(_per_image(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_contrast (blend with the mean luma) with one factor per image."""
    # The mean luma is linear in the channel means, which are much cheaper to reduce.
    luma = x.mean(dim=(2, 3)) @ _constant(_LUMA, x.device, x.dtype)
    factor = _per_image(factor)
    return x.mul(factor).add_(_per_image(luma) * (1.0 - factor)).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_saturation (blend with the per-pixel luma) with one factor per image."""
    factor = _per_image(factor)
    return x.mul(factor).add_(_grayscale(x).mul_(1.0 - factor)).clamp_(0.0, 1.0)


# Hue of red, green and blue in sextants, shifted by 3 for the triangle wave below.
_HUE_OFFSETS = (0.0 - 3.0, 4.0 - 3.0, 2.0 - 3.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Torchvision adjust_hue with one factor in [-0.5, 0.5] per image; float input in [0, 1].

    A closed form of RGB -> HSV -> shift -> RGB: with chroma c = max - min and the shifted
    hue H in sextants, channel k is min + c * clamp(|(H + o_k) mod 6 - 3| - 1, 0, 1) with
    o = (0, 4, 2) for (R, G, B).
    It needs neither torchvision's six sector masks nor its einsum and agrees with it to ~1e-6.
    """
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    # Hue numerator (scaled by the chroma, so one division serves all cases) for a max in
    # blue, switched to red's and then green's where those hold the max. For values in
    # [0, 1], floor(v - max) + 1 is 1 where v is the max and 0 elsewhere: an arithmetic
    # select, 2.5x faster than torch.where on boolean masks. Where channels tie for the max
    # their numerators are equal (or 6 sextants apart), so torchvision's priority among them
    # needs no care. Where the chroma is 0 so is the numerator: every channel becomes grey.
    hue = (r - g).add_(chroma, alpha=4.0)
    hue.add_((r - maxc).floor_().add_(1.0).mul_(g - b - hue))
    hue.add_((g - maxc).floor_().add_(1.0).mul_((b - r).add_(chroma, alpha=2.0) - hue))
    hue.div_(chroma.clamp_min(1e-12)).add_(factor.view(-1, 1, 1), alpha=6.0)
    # hue is in [-4, 8], so t = hue + offset - 3 is in [-7, 9], where |(t + 3) mod 6 - 3|
    # equals the fold 3 - |3 - ||t| - 6||; this avoids torch.remainder, the slowest op here.
    wave = hue.unsqueeze(1) + _constant(_HUE_OFFSETS, x.device, x.dtype).view(1, 3, 1, 1)
    wave.abs_().sub_(6.0).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return wave.mul_(chroma.unsqueeze(1).neg()).add_(maxc.unsqueeze(1))


def random_resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple = (0.08, 1.0),
    ratio: tuple = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Boxes (n, 4) int64 as (top, left, h, w), torchvision RandomResizedCrop.get_params per image.

    Each image gets 10 tries of (area, log-aspect); the first try that fits is used, else
    torchvision's central fallback. Sizes are computed in float64 and rounded half-to-even
    like Python's round().
    """
    device = generator.device
    u = torch.rand(n, 22, generator=generator, device=device, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :10])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 10:20])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    # floor(u * (count)) is randint(0, count); the clamp guards u*count rounding up to count.
    top = torch.minimum((u[:, 20] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, 21] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, (height - h).div(2, rounding_mode="floor"))
    left = torch.where(found, left, (width - w).div(2, rounding_mode="floor"))
    return torch.stack((top, left, h, w), dim=1).long()


def resized_crop_flip(
    x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """Crop boxes (top, left, h, w) of float images, resize each to `size` x `size` (None:
    back to (H, W)), mirror if flip.

    One affine sampling grid + grid_sample (bilinear); a flip is a negative x-scale. The grid
    has no rotation, so it is built from one x and one y vector per image, which is far
    cheaper than F.affine_grid's batched matmul. Sample points are clamped to the crop's
    outermost pixel centres, so borders match resizing the cropped image (torchvision's
    resized_crop) instead of reading pixels outside the crop.
    """
    n, _, height, width = x.shape
    out_height, out_width = (height, width) if size is None else (size, size)
    top, left, h, w = boxes.to(x.dtype).unbind(1)

    def axis(start, length, size, out_size, mirror=None):
        # Normalised coordinate (align_corners=False) of the source point of each output
        # pixel centre: output pixel q has its centre at (2q + 1) / out_size - 1 in the crop,
        # input pixel p at (2p + 1) / size - 1 in the image.
        centres = (torch.arange(out_size, device=x.device, dtype=x.dtype) * 2 + 1) / out_size - 1
        scale = length if mirror is None else torch.where(mirror, -length, length)
        coords = centres * (scale / size)[:, None] + ((2 * start + length) / size - 1)[:, None]
        lo = (2 * start + 1) / size - 1
        hi = (2 * (start + length) - 1) / size - 1
        return torch.clamp(coords, lo[:, None], hi[:, None])

    xs, ys = axis(left, w, width, out_width, flip), axis(top, h, height, out_height)
    grid = torch.stack(
        (xs[:, None, :].expand(n, out_height, out_width), ys[:, :, None].expand(n, out_height, out_width)), dim=3
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_affine_params(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    degrees: float = 18.0,
    translate: tuple = (0.1, 0.1),
    scale: tuple = (0.9, 1.1),
    shear: float = 10.0,
) -> torch.Tensor:
    """(n, 5) float64 rows (angle, tx, ty, scale, shear_x), RandomAffine.get_params per image.

    As torchvision draws them for `degrees` and `shear` given as single numbers: angle in
    [-degrees, degrees], whole-pixel translations round(U(-t * size, t * size)) (half to
    even, like Python's round()) with x from the width, and an x-shear only.
    """
    device = generator.device
    u = torch.rand(n, 5, generator=generator, device=device, dtype=torch.float64)
    dx, dy = translate[0] * width, translate[1] * height
    low = _constant((-degrees, -dx, -dy, scale[0], -shear), device, torch.float64)
    high = _constant((degrees, dx, dy, scale[1], shear), device, torch.float64)
    params = low + (high - low) * u
    params[:, 1:3] = params[:, 1:3].round()
    return params


def inverse_affine_matrices(params: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) output -> input pixel maps of rows (angle, tx, ty, scale, shear_x).

    torchvision's _get_inverse_affine_matrix with shear_y = 0 and the centre (0, 0) at the
    image centre, as its tensor `affine` uses it.
    """
    angle, tx, ty, scale, shear_x = params.unbind(1)
    rot, sx = torch.deg2rad(angle), torch.deg2rad(shear_x)
    cos, sin, tan = rot.cos(), rot.sin(), sx.tan()
    # Rotation-shear [[a, b], [c, d]] has determinant 1, so its inverse is [[d, -b], [-c, a]].
    a, b, c, d = cos, -cos * tan - sin, sin, -sin * tan + cos
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2, m5 = -(m0 * tx + m1 * ty), -(m3 * tx + m4 * ty)
    return torch.stack((m0, m1, m2, m3, m4, m5), dim=1).view(-1, 2, 3)


def affine(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Warp float images (N, C, H, W) by per-image rows (angle, tx, ty, scale, shear_x).

    torchvision `functional.affine(img, angle, [tx, ty], scale, [shear_x, 0.0], BILINEAR,
    fill=0)` on tensors, batched: one affine_grid + grid_sample. Like torchvision, a ones
    channel is warped along and multiplies the result, so border pixels fade to the fill.
    """
    n, _, height, width = x.shape
    if n == 0:  # affine_grid rejects an empty batch
        return x.clone()
    matrices = inverse_affine_matrices(params)
    # The matrices act on pixel offsets from the centre; affine_grid's normalised
    # coordinates (align_corners=False) are those offsets divided by half the size.
    half = _constant((width / 2, height / 2), matrices.device, matrices.dtype)
    to_normalised = torch.cat((half[None, :] / half[:, None], 1 / half[:, None]), dim=1)
    theta = (matrices * to_normalised).to(x.dtype)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    warped = F.grid_sample(
        torch.cat((x, x.new_ones(n, 1, height, width)), dim=1),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return warped[:, :-1] * warped[:, -1:]


def erasing_side(height: int, width: int, scale: float) -> int:
    """Side of RandomErasing's box for scale (s, s) and ratio (1, 1); 0 if none fits.

    round(sqrt(H * W * s)) with s in float32, as torchvision's uniform_(s, s) returns it;
    torchvision leaves the image unchanged when the box is not smaller than the image.
    """
    s = torch.tensor(float(scale), dtype=torch.float32).item()
    side = int(round(math.sqrt(height * width * s)))
    return side if side < height and side < width else 0


class Augmentation:
    """Callable: uint8 (N, 3, H, W) batch and a generator on its device -> normalised float32
    (N, 3, size, size), or (N, 3, H, W) when `size` is None."""

    resizes = False  # whether the pipeline can give another size than its input's

    def __init__(self, mean: tuple, std: tuple, size: int | None = None):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        if size is not None and size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.size = size

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
        if self.size is not None and not self.resizes and images.shape[-2:] != (self.size, self.size):
            raise ValueError(
                f"{type(self).__name__} keeps the images' size {tuple(images.shape[-2:])}; "
                f"it cannot give {self.size} x {self.size} views"
            )
        return self.augment(images, generator)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """In place (x - mean) / std on [0, 1]-scaled float images."""
        mean = _constant(self.mean, x.device, x.dtype).view(1, 3, 1, 1)
        std = _constant(self.std, x.device, x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class Normalise(Augmentation):
    """ToTensor + Normalize: no randomness."""

    def augment(self, images, generator):
        return self.normalise_(images.float().div_(255))


class CropFlip(Augmentation):
    """RandomCrop(padding, zero fill) + RandomHorizontalFlip(0.5); padding 0 is flip only."""

    def __init__(self, mean: tuple, std: tuple, padding: int = 0, size: int | None = None):
        super().__init__(mean, std, size)
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


def blur_kernel_size(side: int) -> int:
    """The odd Gaussian-blur kernel of relic-pytorch for images of `side` pixels: ceil(0.1 side)
    rounded up to odd (5 on CIFAR, 11 on STL-10)."""
    return math.ceil(0.1 * side) // 2 * 2 + 1


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Torchvision gaussian_blur (reflect padding, separable kernel) with one sigma per image.

    The kernel is small (5 to 11 taps), so each direction is a weighted sum of shifted slices
    of the padded batch rather than a grouped convolution with a kernel per image.
    """
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (taps / sigma.to(x.dtype)[:, None]).square())
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(-1, 1, 1, 1, kernel_size)
    pad = kernel_size // 2
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = tensor_sum(weights[..., k] * padded[..., k : k + width] for k in range(kernel_size))
    padded = F.pad(x, (0, 0, pad, pad), mode="reflect")
    return tensor_sum(weights[..., k] * padded[..., k : k + height, :] for k in range(kernel_size))


class CropColorAugmentation(Augmentation):
    """RandomResizedCrop(scale `crop_scale`) + flip + ColorJitter(`jitter`, default .8, .8, .8,
    .2) with p .8 in a random order per image + RandomGrayscale(.2): the original
    relationnet/simclr pipeline (crop scale (0.08, 1)); with `blur`, then
    RandomApply(GaussianBlur(blur_kernel_size(input side), sigma (0.1, 2)), `blur_p`) and
    RandomSolarize(127, `solarize_p`): relic-pytorch's views (blur p 1), BYOL's (p 1 and 0.1).

    All parameters of the batch are drawn first (the blur and solarize ones after the
    others, and the draw of which images are blurred only when blur_p < 1, so each pipeline
    draws what it drew before the options that it does not use existed), then images are
    processed in chunks that stay in cache on the CPU; the chunk size therefore changes the
    result by float rounding at most (a kernel may vectorise batches of other sizes otherwise).
    """

    jitter_p = 0.8
    grayscale_p = 0.2
    blur_sigma = (0.1, 2.0)
    solarize_threshold = 127 / 255
    resizes = True

    def __init__(
        self,
        mean: tuple,
        std: tuple,
        chunk_size: int | None = None,
        size: int | None = None,
        crop_scale: tuple = (0.08, 1.0),
        blur: bool = False,
        solarize_p: float = 0.0,
        jitter: tuple = (0.8, 0.8, 0.8, 0.2),
        blur_p: float = 1.0,
    ):
        super().__init__(mean, std, size)
        self.chunk_size = chunk_size  # None: 256 on the CPU, the whole batch elsewhere
        self.crop_scale, self.blur, self.solarize_p = tuple(crop_scale), blur, solarize_p
        self.jitter, self.blur_p = tuple(jitter), blur_p

    def augment(self, images, generator):
        n, _, height, width = images.shape
        device = images.device
        boxes = random_resized_crop_boxes(n, height, width, generator, scale=self.crop_scale)
        u = torch.rand(n, 11, generator=generator, device=device)
        flip = u[:, 0] < 0.5
        jittered = u[:, 1] < self.jitter_p
        b, c, s, h = self.jitter
        factors = torch.stack(
            (1 - b + 2 * b * u[:, 2], 1 - c + 2 * c * u[:, 3], 1 - s + 2 * s * u[:, 4], h * (2 * u[:, 5] - 1)), dim=1
        )
        order = u[:, 6:10].argsort(dim=1)  # a uniform random permutation of the 4 ops per image
        gray = u[:, 10] < self.grayscale_p
        if self.blur:
            extra = torch.rand(n, 2, generator=generator, device=device)
            low, high = self.blur_sigma
            sigma = low + (high - low) * extra[:, 0]
            solarized = extra[:, 1] < self.solarize_p
            blurred = torch.rand(n, generator=generator, device=device) < self.blur_p if self.blur_p < 1 else None
            kernel_size = blur_kernel_size(height)

        side = (height, width) if self.size is None else (self.size, self.size)
        out = torch.empty((n, 3, *side), dtype=torch.float32, device=device)
        chunk = self.chunk_size or (256 if device.type == "cpu" else max(n, 1))
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            x = resized_crop_flip(images[part].float().div_(255), boxes[part], flip[part], self.size)
            x = self._jitter(x, jittered[part], order[part], factors[part])
            x = _apply_where(x, gray[part], _grayscale_rgb)
            if self.blur:
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

    def __init__(self, mean: tuple, std: tuple, cutout: float, size: int | None = None):
        super().__init__(mean, std, size)
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


def _no_cutout() -> float:
    raise ValueError(
        "the flip_affine_erase (finetune) augmentation needs the data set's cutout scale, and "
        "this data set defines none (the original code has none for tiny and slim)"
    )


# BYOL's colour jitter (brightness, contrast, saturation, hue), milder than SimCLR's (0.8, 0.8, 0.8, 0.2).
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
# name -> factory(mean, std, padding, cutout, size); see the module's docstring.
PIPELINES: dict[str, Callable[..., Augmentation]] = {
    "crop_color_gray": lambda mean, std, padding, cutout, size: CropColorAugmentation(mean, std, size=size),
    "crop_color_gray_blur_solarize": lambda mean, std, padding, cutout, size: CropColorAugmentation(
        mean, std, size=size, crop_scale=(0.1, 1.0), blur=True, solarize_p=0.2
    ),
    "crop_color_gray_blur": lambda mean, std, padding, cutout, size: CropColorAugmentation(
        mean, std, size=size, crop_scale=(0.05, 1.0), blur=True
    ),
    "crop_softcolor_gray_blur": lambda mean, std, padding, cutout, size: CropColorAugmentation(
        mean, std, size=size, jitter=BYOL_JITTER, blur=True
    ),
    "crop_softcolor_gray_blur_solarize": lambda mean, std, padding, cutout, size: CropColorAugmentation(
        mean, std, size=size, jitter=BYOL_JITTER, blur=True, blur_p=0.1, solarize_p=0.2
    ),
    "crop_softcolor_gray_halfblur": lambda mean, std, padding, cutout, size: CropColorAugmentation(
        mean, std, size=size, jitter=(0.4, 0.4, 0.4, 0.1), blur=True, blur_p=0.5
    ),
    "pad_crop_flip": lambda mean, std, padding, cutout, size: CropFlip(mean, std, padding, size),
    "flip": lambda mean, std, padding, cutout, size: CropFlip(mean, std, 0, size),
    "none": lambda mean, std, padding, cutout, size: Normalise(mean, std, size),
    "flip_affine_erase": lambda mean, std, padding, cutout, size: FinetuneAugmentation(
        mean, std, _no_cutout() if cutout is None else cutout, size
    ),
}
ALIASES = {"relationnet": "crop_color_gray", "standard": "pad_crop_flip", "finetune": "flip_affine_erase"}


def pipeline_name(name: str) -> str:
    """The registered name of a pipeline or of its alias."""
    resolved = ALIASES.get(name, name)
    if resolved not in PIPELINES:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join([*PIPELINES, *ALIASES])}")
    return resolved


def build_augmentation(
    name: str, mean: tuple, std: tuple, padding: int = 0, *, cutout: float | None = None, size: int | None = None
) -> Augmentation:
    """The batch augmentation `name` (a key of PIPELINES or ALIASES); `padding` is used by
    pad_crop_flip, `cutout` (the data set's RandomErasing scale) by flip_affine_erase, and
    `size` is the side of the views (None: the images' own)."""
    return PIPELINES[pipeline_name(name)](mean, std, padding, cutout, size)
