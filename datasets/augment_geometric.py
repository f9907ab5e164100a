"""Geometric ops on batches of images, with one parameter set per image: the random resized
crop with flip, and the random affine warp and erasing box of the fine-tuning pipeline.

Parameters are drawn as torchvision's transforms draw them for one image (`get_params`), for
a whole batch at once from the `torch.Generator` passed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from datasets.augment_photometric import device_constant


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
    low = device_constant((-degrees, -dx, -dy, scale[0], -shear), device, torch.float64)
    high = device_constant((degrees, dx, dy, scale[1], shear), device, torch.float64)
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
    half = device_constant((width / 2, height / 2), matrices.device, matrices.dtype)
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
