"""Batched SimCLR views with per-sample randomness, on the images' device.

torchvision's SimCLR pipeline (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomApply(ColorJitter)``, ``RandomGrayscale``, optionally ``GaussianBlur`` and
``RandomSolarize``) works one image at a time; applied to a batched tensor it draws ONE
random setting for the whole batch. Here every image draws its own parameters, as in the
per-image pipeline, and each operation runs once for the whole batch:

1. ``SimCLRAugment.sample`` draws all random numbers of a batch in one call (``ViewParams``);
2. ``SimCLRAugment.apply`` crops, resizes and flips with one ``grid_sample`` call (two
   batched matrix products where crops shrink), then runs the colour operations as
   arithmetic with per-image factors. There is no Python loop over images, no ``.item()``
   and no branch on tensor values, so on a GPU nothing waits for the device.

Every operation matches torchvision's functional op on the same parameters to float32
rounding (the tests allow 1e-5 on [0, 1] values).

``ViewBatches`` turns a uint8 dataset tensor into shuffled mini-batches of two views,
reproducible from (seed, epoch) and independent of the number of processes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dyntemp.data import CIFAR10_MEAN, CIFAR10_STD

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses them.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# Colour-jitter operations in torchvision's order; ``ViewParams.order`` holds a permutation.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)

TRIALS = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back

CPU_CHUNK_PIXELS = 128 * 32 * 32  # output pixels per chunk on the CPU (see ``apply``)


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """The random parameters of ``len(self)`` views; each field has the batch as first axis.

    ``scale`` and ``log_ratio`` (N x 10) are the area fractions and log aspect ratios of
    torchvision's ten crop trials, ``position`` (N x 2, uniform in [0, 1)) places the box;
    ``SimCLRAugment.boxes`` turns them into crops. ``factors`` (N x 4) are the brightness,
    contrast, saturation and hue factors, ``order`` (N x 4) the order in which the four run;
    ``flip``, ``jitter``, ``gray``, ``blur`` and ``solarize`` (N,) say whether each step
    applies; ``sigma`` (N,) is the blur's standard deviation.
    """

    scale: torch.Tensor
    log_ratio: torch.Tensor
    position: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def __len__(self) -> int:
        return self.flip.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> ViewParams:
        return ViewParams(**{name: value[index] for name, value in self._items()})

    def to(self, device: torch.device | str) -> ViewParams:
        """The same parameters on ``device``.

        Host to device copies do not wait for the device (``non_blocking``; from pageable
        memory the data is staged at once, so the host may reuse it). Copies to the host
        are blocking: a non-blocking one could be read before it has arrived.
        """
        device = torch.device(device)
        return ViewParams(**{name: _copy(value, device) for name, value in self._items()})

    def _items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for field in dataclasses.fields(self):
            yield field.name, getattr(self, field.name)


def _copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; non-blocking only from the host to an accelerator."""
    to_accelerator = tensor.device.type == "cpu" and device.type != "cpu"
    return tensor.to(device, non_blocking=to_accelerator)


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Every setting of ``SimCLRAugment``, checked once; the defaults are SimCLR's for CIFAR.

    The steps and their torchvision equivalents (the tests check each one against it):
    ``RandomResizedCrop(size, scale, ratio)`` (bilinear, the crop sampler's ten trials and
    fallback), ``RandomHorizontalFlip(flip)``, ``RandomApply([ColorJitter(*jitter)],
    jitter_p)`` (the four operations in a random order per image), ``RandomGrayscale(gray_p)``,
    ``RandomApply([GaussianBlur(blur_kernel, (0.1, 2.0))], blur_p)``,
    ``RandomSolarize(0.5, solarize_p)``, ``Normalize(mean, std)`` unless ``normalize=False``.
    ``blur_kernel=None`` means SimCLR's choice: 10 % of ``size``, made odd, at least 3.
    """

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    normalize: bool = True
    blur_kernel: int | None = None

    def __post_init__(self) -> None:
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        put("size", int(self.size))
        for name in ("scale", "ratio", "jitter", "mean", "std"):
            put(name, tuple(float(v) for v in getattr(self, name)))
        for name in ("flip", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            put(name, float(getattr(self, name)))
        put("normalize", bool(self.normalize))
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if len(self.jitter) != 4:
            raise ValueError(
                f"jitter is (brightness, contrast, saturation, hue), got {self.jitter}"
            )
        brightness, contrast, saturation, hue = self.jitter
        if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
            raise ValueError(
                f"jitter needs brightness, contrast, saturation >= 0 and "
                f"hue in [0, 0.5], got {self.jitter}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 channels, std > 0; got {self.mean}, {self.std}")
        if self.blur_kernel is None:  # SimCLR's choice: 10 % of the image side, made odd
            put("blur_kernel", max(3, int(0.1 * self.size) | 1))
        if (
            int(self.blur_kernel) != self.blur_kernel
            or self.blur_kernel < 1
            or not self.blur_kernel % 2
        ):
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        put("blur_kernel", int(self.blur_kernel))


class SimCLRAugment:
    """SimCLR's two-view augmentation for a batch of uint8 images, each with its own draw.

    Built from ``AugmentSettings`` (``SimCLRAugment(settings)``) or from its fields as
    keywords (``SimCLRAugment(size=32, blur_p=0.5)``); ``settings`` holds them all.
    ``aug(images, generator)`` returns float32 views (B x 3 x size x size) on the images'
    device, normalised with ``mean``/``std`` unless ``normalize=False`` (then in [0, 1]).
    ``generator`` is a ``torch.Generator`` on the images' device or on the CPU; a CPU
    generator gives the same views on every device.

    Without augmentation (evaluation), ``unaugmented(images)`` is ``standardize(resize(
    images))``: uint8 to float in [0, 1] at the training ``size``, then ``Normalize``.
    """

    def __init__(self, settings: AugmentSettings | None = None, /, **changes) -> None:
        if settings is None:
            settings = AugmentSettings(**changes)
        elif changes:
            settings = dataclasses.replace(settings, **changes)
        if not isinstance(settings, AugmentSettings):
            raise TypeError(f"settings must be AugmentSettings, got {settings!r}")
        self.settings = settings
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"SimCLRAugment({self.settings!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SimCLRAugment) and other.settings == self.settings

    def __hash__(self) -> int:
        return hash(self.settings)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.apply(images, self.sample(len(images), generator, images.device))

    # -- random parameters ------------------------------------------------------------------

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> ViewParams:
        """Draw the parameters of ``n`` views from ``generator``, returned on ``device``.

        All draws come from one ``torch.rand(n, 36)`` call in a fixed layout, whatever the
        probabilities, so the same generator state always gives the same parameters.
        """
        source = generator.device if generator is not None else torch.device(device or "cpu")
        u = torch.rand(n, 2 * TRIALS + 16, generator=generator, device=source)
        scale_lo, scale_hi = self.settings.scale
        log_lo, log_hi = math.log(self.settings.ratio[0]), math.log(self.settings.ratio[1])
        columns = iter(u.split([TRIALS, TRIALS, 2, 1, 1, 4, 4, 1, 1, 1, 1], dim=1))
        scale = scale_lo + (scale_hi - scale_lo) * next(columns)
        log_ratio = log_lo + (log_hi - log_lo) * next(columns)
        position = next(columns)
        flip = next(columns).squeeze(1) < self.settings.flip
        jitter = next(columns).squeeze(1) < self.settings.jitter_p
        b, c, s, h = self.settings.jitter
        bounds = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s)]
        draws = next(columns)
        factors = torch.stack(
            [lo + (hi - lo) * draws[:, k] for k, (lo, hi) in enumerate([*bounds, (-h, h)])], dim=1
        )
        order = torch.argsort(next(columns), dim=1)  # a uniform random permutation of 0..3
        gray = next(columns).squeeze(1) < self.settings.gray_p
        blur = next(columns).squeeze(1) < self.settings.blur_p
        sigma = 0.1 + 1.9 * next(columns).squeeze(1)  # GaussianBlur's sigma range (0.1, 2.0)
        solarize = next(columns).squeeze(1) < self.settings.solarize_p
        params = ViewParams(
            scale, log_ratio, position, flip, jitter, factors, order, gray, blur, sigma, solarize
        )
        target = torch.device(device) if device is not None else source
        return params if target == source else params.to(target)

    def boxes(self, params: ViewParams, height: int, width: int) -> torch.Tensor:
        """Crop boxes (N x 4: top, left, box height, box width) in ``height x width`` images.

        torchvision's ``RandomResizedCrop.get_params`` for all samples at once: of the ten
        (area, aspect ratio) trials the first whose rounded box fits the image is taken, at a
        uniform integer position; if none fits, the central crop clipped to the ratio range.
        """
        area = height * width
        ratio = torch.exp(params.log_ratio)
        box_w = torch.round(torch.sqrt(area * params.scale * ratio))
        box_h = torch.round(torch.sqrt(area * params.scale / ratio))
        fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
        first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first True
        found = fits.any(dim=1)
        box_w = box_w.gather(1, first).squeeze(1)
        box_h = box_h.gather(1, first).squeeze(1)
        top = torch.floor(params.position[:, 0] * (height - box_h + 1))
        left = torch.floor(params.position[:, 1] * (width - box_w + 1))
        fallback_h, fallback_w = _central_box(height, width, self.settings.ratio)
        box_h = torch.where(found, box_h, fallback_h)
        box_w = torch.where(found, box_w, fallback_w)
        top = torch.where(found, top.clamp_max(height - box_h), (height - fallback_h) // 2)
        left = torch.where(found, left.clamp_max(width - box_w), (width - fallback_w) // 2)
        return torch.stack((top, left, box_h, box_w), dim=1).to(torch.int64)

    # -- the views ------------------------------------------------------------------------

    def apply(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """The views of ``images`` (uint8, B x 3 x H x W) under ``params`` (length B).

        On the CPU the batch goes through in chunks of ``CPU_CHUNK_PIXELS`` output pixels:
        the many temporaries then stay in the cache and reuse freed memory instead of
        faulting in fresh pages, which makes the whole about twice as fast.
        """
        _check_images(images)
        if len(params) != len(images):
            raise ValueError(f"{len(params)} parameter sets for {len(images)} images")
        step = max(1, CPU_CHUNK_PIXELS // self.settings.size**2)
        if images.device.type != "cpu" or len(images) <= step:
            return self._views(images, params)
        chunks = range(0, len(images), step)
        return torch.cat([self._views(images[i : i + step], params[i : i + step]) for i in chunks])

    def _views(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        x = self.resized_crop(images, params)
        x = self.color_jitter(x, params)
        x = _select(params.gray, grayscale(x).expand_as(x), x)
        if self.settings.blur_p > 0:  # a branch on the settings, never on tensor values
            blurred = gaussian_blur(x, params.sigma, self.settings.blur_kernel).clamp_(0, 1)
            x = _select(params.blur, blurred, x)
        if self.settings.solarize_p > 0:
            x = torch.where(params.solarize[:, None, None, None] & (x >= 0.5), 1 - x, x)
        return self.standardize(x)

    def unaugmented(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the network sees them, without augmentation (for evaluation).

        ``standardize(resize(images))``: float32 in [0, 1] at the training ``size``, then
        normalised exactly as the views are.
        """
        return self.standardize(self.resize(images))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images to float32 in [0, 1], resized to ``size x size`` where they differ.

        Bilinear and antialiased, as torchvision's ``Resize``; images already at ``size``
        only change type.
        """
        _check_images(images)
        x = images.to(torch.float32).mul_(1 / 255)
        size = self.settings.size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0, 1)
        return x

    def resized_crop(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Crop, resize to ``size x size`` and flip, as torchvision's ``resized_crop``.

        Returns float32 in [0, 1]. Bilinear with half-pixel centres; antialiased, as
        torchvision is by default, which only changes crops larger than ``size`` (possible
        only in images larger than ``size``).
        """
        height, width = images.shape[-2:]
        boxes = self.boxes(params, height, width).to(torch.float32)
        size = self.settings.size
        if height <= size and width <= size:  # a branch on shapes: crops only grow
            return _bilinear_crops(images, boxes, params.flip, size)
        return _antialiased_crops(images, boxes, params.flip, size)

    def color_jitter(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """torchvision's ColorJitter with each image's factors and order, where ``jitter``.

        Brightness, contrast and saturation are all blends ``f * x + (1 - f) * target``
        (target 0, the mean gray level, the gray image), clamped to [0, 1]. The hue shift is
        the costly one, so it runs once for the whole batch: the blends an image does before
        its hue shift run in three slots before it, those after in three slots after it, an
        unused slot being the identity blend f = 1.
        """
        if self.settings.jitter_p == 0:
            return x
        factor, gray_weight, mean_weight = _blend_slots(params)
        for slot in range(6):
            x = _blend(x, factor[:, slot], gray_weight[:, slot], mean_weight[:, slot])
            if slot == 2 and self.settings.jitter[HUE] > 0:
                shifted = adjust_hue(x, params.factors[:, HUE])
                x = _select(params.jitter, shifted, x)
        return x

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's ``Normalize(mean, std)`` of float images in [0, 1] (B x 3 x H x W).

        The identity with ``normalize=False``.
        """
        if not self.settings.normalize:
            return x
        if x.device not in self._affine:  # made once per device: no copy to it per batch
            scale = 1 / torch.tensor(self.settings.std, dtype=torch.float32).view(1, 3, 1, 1)
            shift = -torch.tensor(self.settings.mean, dtype=torch.float32).view(1, 3, 1, 1)
            shift = shift * scale
            self._affine[x.device] = (scale.to(x.device), shift.to(x.device))
        scale, shift = self._affine[x.device]
        return torch.addcmul(shift, x, scale)  # (x - mean) / std in one pass


# -- the operations, batched, each with per-image parameters ---------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (B x 1 x H x W) of float RGB images, torchvision's ``rgb_to_grayscale``."""
    r, g, b = x.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB images by ``shift`` (B,) turns, as torchvision does.

    torchvision converts to HSV, adds the shift to H and converts back. A hue rotation keeps
    each pixel's largest and smallest channel, so the round trip reduces to the hue itself,
    in sixths of a turn (``h6``, from the channel holding the maximum, red first), and the
    closed form of the HSV-to-RGB table: ``min + chroma * clamp(w, 0, 1)`` with
    ``w = |h6 - 3| - 1`` for red, ``2 - |h6 - 2|`` for green, ``2 - |h6 - 4|`` for blue.
    Comparisons are done as ``1 + sign(channel - max)`` (1 where the channel is the
    maximum, else 0): on the CPU that is several times faster than boolean masks.
    """
    r, g, b = x.unbind(dim=1)
    high = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = high - low
    inv = torch.reciprocal(chroma.clamp_min(torch.finfo(chroma.dtype).tiny))  # 0 / tiny = 0
    red_max = torch.sign(r - high).add_(1)
    green_max = torch.sign(g - high).add_(1).mul_(1 - red_max)
    blue_max = 1 - red_max - green_max
    h6 = red_max.mul_(g - b)
    h6.addcmul_(green_max, torch.add(b - r, chroma, alpha=2))
    h6.addcmul_(blue_max, torch.add(r - g, chroma, alpha=4))
    h6 = torch.addcmul(6 * shift.view(-1, 1, 1), h6, inv)
    h6 = h6.sub_(torch.floor(h6 * (1 / 6)).mul_(6))  # in [0, 6)
    out = torch.empty_like(x)
    for channel, (centre, sign, offset) in enumerate(((3, 1, -1), (2, -1, 2), (4, -1, 2))):
        weight = (h6 - centre).abs_().mul_(sign).add_(offset).clamp_(0, 1)
        torch.addcmul(low, chroma, weight, out=out[:, channel])
    return out.clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own ``sigma`` (B,), torchvision's ``gaussian_blur``.

    A separable kernel sampled at integer offsets, normalised to sum 1, reflect padding;
    one grouped convolution per direction for the whole batch.
    """
    batch, channels, height, width = x.shape
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad = kernel_size // 2
    y = x.reshape(1, batch * channels, height, width)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    y = F.conv2d(y, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    return y.view(batch, channels, height, width)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` with a factor (B,) per image."""
    zero = torch.zeros_like(factor)
    return _blend(x, factor, zero, zero)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_contrast`` with a factor (B,) per image."""
    return _blend(x, factor, torch.zeros_like(factor), 1 - factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_saturation`` with a factor (B,) per image."""
    return _blend(x, factor, 1 - factor, torch.zeros_like(factor))


def _blend(
    x: torch.Tensor, factor: torch.Tensor, gray_weight: torch.Tensor, mean_weight: torch.Tensor
) -> torch.Tensor:
    """``clamp(f * x + g * gray(x) + m * mean(gray(x)), 0, 1)``, with f, g, m (B,) per image.

    torchvision's brightness, contrast and saturation are the blends ``f * x + (1 - f) *
    target`` with target 0, the mean gray level and the gray image: (g, m) = (0, 0),
    (0, 1 - f) and (1 - f, 0). With f = 1, g = m = 0 the image comes back bit for bit.
    """
    gray = grayscale(x)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    target = torch.addcmul(
        mean_weight.view(-1, 1, 1, 1) * mean, gray, gray_weight.view(-1, 1, 1, 1)
    )
    return torch.addcmul(target, x, factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def _blend_slots(params: ViewParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (f, g, m) of ``_blend`` (each B x 6) for the six blend slots of ``color_jitter``.

    Slots 0-2 come before the hue shift, 3-5 after it. An image's blend operations, in its
    order, fill slots 0..q-1 and then q..2 of the second half, q being the number that come
    before its hue shift; every other slot (and every slot of an image without jitter) is
    the identity (1, 0, 0).
    """
    is_hue = params.order == HUE
    hue_at = torch.argmax(is_hue.to(torch.uint8), dim=1, keepdim=True)
    blends = params.order.gather(1, torch.argsort(is_hue.to(torch.uint8), dim=1, stable=True))
    blends = blends[:, :3].repeat(1, 2)  # the three blend operations in order, twice
    slot = torch.arange(3, device=hue_at.device)
    active = torch.cat([slot < hue_at, slot >= hue_at], dim=1) & params.jitter[:, None]
    factor = torch.where(active, params.factors.gather(1, blends), 1.0)
    keep = 1 - factor
    return factor, keep * (blends == SATURATION), keep * (blends == CONTRAST)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` for the images where ``mask`` (B,), else ``b``: exactly, as ``torch.where``.

    ``lerp`` with a 0/1 weight returns ``b`` or ``a`` bit for bit, and on the CPU it is
    three times faster than ``where``.
    """
    return torch.lerp(b, a, mask.to(b.dtype).view(-1, 1, 1, 1))


def _bilinear_crops(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """Crop, enlarge and flip every image in one ``grid_sample`` call.

    Output pixel o of a crop [start, start + length) samples the input at ``start +
    (o + 0.5) * length / size - 0.5`` (half-pixel centres), clamped to the crop as
    ``F.interpolate`` clamps to the image; a flipped image reads its output columns right to
    left. These coordinates, scaled to [-1, 1], are the sampling grid.
    """
    height, width = images.shape[-2:]
    rows = _sample_positions(boxes[:, 0], boxes[:, 2], size, torch.zeros_like(flip))
    columns = _sample_positions(boxes[:, 1], boxes[:, 3], size, flip)
    grid_y = rows.mul_(2 / height).add_(1 / height - 1)  # align_corners=False scaling
    grid_x = columns.mul_(2 / width).add_(1 / width - 1)
    batch = len(images)
    grid = torch.stack(
        (
            grid_x[:, None, :].expand(batch, size, size),
            grid_y[:, :, None].expand(batch, size, size),
        ),
        dim=-1,
    )
    x = F.grid_sample(
        images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return x.mul_(1 / 255).clamp_(0, 1)  # uint8 to [0, 1] once; rounding stays inside


def _sample_positions(
    start: torch.Tensor, length: torch.Tensor, size: int, flip: torch.Tensor
) -> torch.Tensor:
    """Input coordinates (B x size) sampled by the output pixels of crops being enlarged."""
    out = torch.arange(size, device=start.device, dtype=torch.float32)
    out = torch.where(flip[:, None], size - 1 - out, out)
    first, last = start[:, None], (start + length - 1)[:, None]
    source = first + (out + 0.5) * (length[:, None] / size) - 0.5
    return torch.minimum(torch.maximum(source, first), last)


def _antialiased_crops(
    images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """Crop, resize (antialiased) and flip with two batched matrix products.

    Resampling is separable: the whole batch is ``rows @ image @ columns^T`` with per-image
    (size x H) and (size x W) weight matrices, the flip being the column matrix upside down.
    """
    batch, height, width = len(images), images.shape[-2], images.shape[-1]
    no_flip = torch.zeros_like(flip)
    rows = _interpolation_matrix(boxes[:, 0], boxes[:, 2], height, size, no_flip, 1 / 255)
    columns = _interpolation_matrix(boxes[:, 1], boxes[:, 3], width, size, flip)
    # uint8 to float once, laid out B x H x 3 x W so that both products are plain bmm's.
    x = images.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    x = torch.bmm(rows, x.view(batch, height, 3 * width))  # B x size x (3 W)
    x = torch.bmm(x.view(batch, size * 3, width), columns.transpose(1, 2))
    x = x.view(batch, size, 3, size).permute(0, 2, 1, 3).contiguous()
    return x.clamp_(0, 1)  # weights summing to 1 + rounding must not leave [0, 1]


def _interpolation_matrix(
    start: torch.Tensor,
    length: torch.Tensor,
    size_in: int,
    size_out: int,
    flip: torch.Tensor,
    gain: float = 1.0,
) -> torch.Tensor:
    """Per-image resampling weights (B x size_out x size_in) resizing [start, start+length).

    ``F.interpolate(mode="bilinear", antialias=True)`` on the crop: output pixel o is
    centred on input coordinate ``c = start + (o + 0.5) * s - 0.5`` with ``s = length /
    size_out``; input pixel k of the crop weighs ``max(0, 1 - |k - c| / max(s, 1))`` and the
    weights are normalised to sum to ``gain``. Enlarging (s <= 1) this is plain bilinear
    interpolation; shrinking, the triangle widens to average over the pixels it covers. A
    flipped image reads its output pixels right to left.
    """
    out = torch.arange(size_out, device=start.device, dtype=torch.float32)
    out = torch.where(flip[:, None], size_out - 1 - out, out)
    step = (length / size_out)[:, None]
    centre = start[:, None] + (out + 0.5) * step - 0.5
    grid = torch.arange(size_in, device=start.device, dtype=torch.float32)
    distance = (grid - centre.unsqueeze(2)).abs_().div_(step.clamp_min(1).unsqueeze(2))
    inside = (grid >= start[:, None]) & (grid < (start + length)[:, None])
    weight = distance.neg_().add_(1).clamp_min_(0).mul_(inside.unsqueeze(1))
    return weight.mul_(gain / weight.sum(dim=2, keepdim=True))


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """RandomResizedCrop's fallback: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected uint8 images of shape B x 3 x H x W, got "
            f"{images.dtype} {tuple(images.shape)}"
        )


# -- two views per image, batch after batch ---------------------------------------------------


class ViewBatches:
    """Pairs of views of each shuffled global batch of ``batch_size`` images (drop_last).

    The shuffle and every sample's augmentation depend only on (seed, epoch) and the
    sample's position in the epoch, never on ``world_size``: rank r of ``world_size`` gets
    the r-th contiguous ``batch_size // world_size`` slice of each global batch, so two ranks
    see together exactly what one process sees. ``len(...)`` is the number of steps. With
    ``with_indices`` each step also gives this rank's images' indices into ``images`` (for a
    rule with a temperature per image, iSogCLR), the views' rows in order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        augment: SimCLRAugment,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
    ) -> None:
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got {seed}, {epoch}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if batch_size < world_size or batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} does not split over {world_size} ranks")
        if batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} images")
        self.images = images
        self.batch_size = batch_size
        self.augment = augment
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = rank, world_size
        self.shard = batch_size // world_size
        self.with_indices = with_indices

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        device = self.images.device
        order = torch.randperm(len(self.images), generator=_generator(self.seed, self.epoch, 0))
        order = order.to(device, non_blocking=True)
        begin, shard, size = self.rank * self.shard, self.shard, self.batch_size
        # Rows of this rank's samples among the 2 x batch_size parameter sets of a global
        # batch: first views, then second views.
        mine = torch.cat([torch.arange(begin, begin + shard)] * 2)
        mine[shard:] += size
        for step in range(len(self)):
            # Parameters of the whole global batch, then this rank's share: what a sample
            # gets depends on its global position only, never on the number of ranks.
            params = self.augment.sample(2 * size, _generator(self.seed, self.epoch, 1, step))
            index = order[step * size + begin :][:shard]
            batch = self.images[index]
            views = self.augment.apply(torch.cat([batch, batch]), params[mine].to(device))
            if self.with_indices:
                yield views[:shard], views[shard:], index
            else:
                yield views[:shard], views[shard:]


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from integers through numpy's SeedSequence mixing."""
    state = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))
