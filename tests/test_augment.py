"""Batched SimCLR views against torchvision's per-image operations and samplers."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from host_reads import host_reads
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from dyntemp.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentSettings,
    SimCLRAugment,
    ViewBatches,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
)
from dyntemp.data import CIFAR10_MEAN, CIFAR10_STD

# float32 arithmetic in another order than torchvision's: differences are rounding only.
TOLERANCE = 1e-5


def images(n: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images (gradients plus noise), so that crops differ visibly."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic")
    noisy = smooth + 0.1 * torch.rand(n, 3, size, size, generator=g)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def reference_view(aug: SimCLRAugment, image: torch.Tensor, params, box) -> torch.Tensor:
    """One view made with torchvision's functional ops, step by step, on one image."""
    x = TF.to_dtype(image, torch.float32, scale=True)
    settings = aug.settings
    x = TF.resized_crop(x, *box.tolist(), [settings.size] * 2, antialias=True)
    if params.flip:
        x = TF.horizontal_flip(x)
    if params.jitter:
        b, c, s, h = params.factors.tolist()
        ops = {
            BRIGHTNESS: lambda y: TF.adjust_brightness(y, b),
            CONTRAST: lambda y: TF.adjust_contrast(y, c),
            SATURATION: lambda y: TF.adjust_saturation(y, s),
            HUE: lambda y: TF.adjust_hue(y, h),
        }
        for op in params.order.tolist():
            x = ops[op](x)
    if params.gray:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if params.blur:
        x = TF.gaussian_blur(x, [settings.blur_kernel] * 2, [params.sigma.item()])
    if params.solarize:
        x = TF.solarize(x, 0.5)
    if settings.normalize:
        x = TF.normalize(x, list(settings.mean), list(settings.std))
    return x


# -- each operation against torchvision ---------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"blur_p": 0.5, "solarize_p": 0.5, "size": 48},
        {"normalize": False, "jitter_p": 1.0, "gray_p": 0.5},
    ],
)
def test_views_match_torchvision_image_by_image(settings):
    aug = SimCLRAugment(**settings)
    size = aug.settings.size
    x = images(48, size=size)
    params = aug.sample(len(x), torch.Generator().manual_seed(1))
    boxes = aug.boxes(params, size, size)
    views = aug.apply(x, params)
    for i in range(len(x)):
        expected = reference_view(aug, x[i], params[i], boxes[i])
        torch.testing.assert_close(views[i], expected, atol=4 * TOLERANCE, rtol=0)
    # Each random step both ran and was skipped for some images, unless its probability is
    # 0 or 1: then it ran for none or for all. So both sides of every branch were compared.
    s = aug.settings
    for name, p in [
        ("flip", s.flip),
        ("jitter", s.jitter_p),
        ("gray", s.gray_p),
        ("blur", s.blur_p),
        ("solarize", s.solarize_p),
    ]:
        taken = int(getattr(params, name).sum())
        low, high = (0, 0) if p == 0 else (len(x), len(x)) if p == 1 else (1, len(x) - 1)
        assert low <= taken <= high, (name, p, taken)


def test_shrinking_crops_match_torchvision_with_antialiasing():
    aug = SimCLRAugment(size=24, normalize=False)
    x = images(32, size=64)
    params = aug.sample(len(x), torch.Generator().manual_seed(2))
    boxes = aug.boxes(params, 64, 64)
    views = aug.resized_crop(x, params)
    for i in range(len(x)):
        expected = TF.resized_crop(x[i].float() / 255, *boxes[i].tolist(), [24, 24], antialias=True)
        expected = TF.horizontal_flip(expected) if params.flip[i] else expected
        torch.testing.assert_close(views[i], expected, atol=TOLERANCE, rtol=0)
    assert (boxes[:, 2] > 24).any()  # some crops really shrink


def test_non_square_images_use_height_and_width_the_right_way_round():
    aug = SimCLRAugment(size=16, normalize=False)
    x = images(16, size=40)[:, :, :24, :]  # 24 x 40
    params = aug.sample(len(x), torch.Generator().manual_seed(3))
    boxes = aug.boxes(params, 24, 40)
    assert (boxes[:, 0] + boxes[:, 2] <= 24).all() and (boxes[:, 1] + boxes[:, 3] <= 40).all()
    views = aug.resized_crop(x, params)
    for i in range(len(x)):
        expected = TF.resized_crop(x[i].float() / 255, *boxes[i].tolist(), [16, 16])
        expected = TF.horizontal_flip(expected) if params.flip[i] else expected
        torch.testing.assert_close(views[i], expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(
    "ours, reference",
    [
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ],
)
def test_blend_operations_match_torchvision(ours, reference):
    x = images(32).float() / 255
    factor = torch.linspace(0.0, 2.0, 32)
    out = ours(x, factor)
    for i in range(32):
        torch.testing.assert_close(
            out[i], reference(x[i], factor[i].item()), atol=TOLERANCE, rtol=0
        )


def test_hue_matches_torchvision_including_gray_and_saturated_pixels():
    x = images(32).float() / 255
    x[0] = 0.5  # gray: hue undefined, unchanged
    x[1, 0], x[1, 1:] = 1.0, 0.0  # pure red
    x[2, :, :, :16] = x[2, :, :, 16:].flip(-1)  # ties between channels
    x[3, 1] = x[3, 0]  # red == green everywhere
    shift = torch.linspace(-0.5, 0.5, 32)
    out = adjust_hue(x, shift)
    for i in range(32):
        torch.testing.assert_close(
            out[i], TF.adjust_hue(x[i], shift[i].item()), atol=TOLERANCE, rtol=0
        )


def test_grayscale_blur_solarize_match_torchvision():
    x = images(16).float() / 255
    torch.testing.assert_close(grayscale(x), TF.rgb_to_grayscale(x), atol=TOLERANCE, rtol=0)
    sigma = torch.linspace(0.1, 2.0, 16)
    blurred = gaussian_blur(x, sigma, 5)
    for i in range(16):
        expected = TF.gaussian_blur(x[i], [5, 5], [sigma[i].item()])
        torch.testing.assert_close(blurred[i], expected, atol=TOLERANCE, rtol=0)


def test_unaugmented_is_torchvisions_resize_then_normalize():
    x = images(8)
    aug = SimCLRAugment()
    expected = TF.normalize(x.float() / 255, list(CIFAR10_MEAN), list(CIFAR10_STD))
    torch.testing.assert_close(aug.unaugmented(x), expected, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(aug.standardize(x.float() / 255), expected, atol=TOLERANCE, rtol=0)
    assert torch.equal(aug.resize(x), x.float() * (1 / 255))  # same size: only the type
    plain = SimCLRAugment(normalize=False)
    torch.testing.assert_close(plain.unaugmented(x), x.float() / 255, atol=1e-7, rtol=0)
    small = SimCLRAugment(size=16)
    resized = TF.resize(x.float() / 255, [16, 16], antialias=True)
    torch.testing.assert_close(small.resize(x), resized, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(
        small.unaugmented(x), TF.normalize(resized, list(CIFAR10_MEAN), list(CIFAR10_STD))
    )
    with pytest.raises(ValueError, match="uint8"):
        aug.unaugmented(x.float())  # float input would otherwise be normalised without / 255


def test_settings_are_one_frozen_dataclass_shown_whole_in_the_repr():
    aug = SimCLRAugment(size=64, scale=(0.2, 1.0), blur_p=0.5, mean=(0.5, 0.5, 0.5), std=[1, 1, 1])
    settings = aug.settings
    assert settings == AugmentSettings(
        size=64, scale=(0.2, 1.0), blur_p=0.5, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0)
    )
    assert settings.blur_kernel == 7 and settings.std == (1.0, 1.0, 1.0)  # derived, converted
    text = repr(aug)
    for part in ("size=64", "mean=(0.5, 0.5, 0.5)", "std=(1.0, 1.0, 1.0)", "blur_kernel=7"):
        assert part in text
    assert SimCLRAugment(settings) == aug and SimCLRAugment(settings, size=32) != aug
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.size = 32
    with pytest.raises(ValueError, match="odd"):
        AugmentSettings(blur_kernel=4)
    with pytest.raises(TypeError):
        SimCLRAugment(sizes=32)  # a misspelt setting is an error, not ignored


def test_unnormalised_views_stay_in_the_unit_interval():
    aug = SimCLRAugment(normalize=False, jitter=(0.8, 0.8, 0.8, 0.5), blur_p=0.5, solarize_p=0.5)
    views = aug(images(64), torch.Generator().manual_seed(0))
    assert views.dtype == torch.float32 and views.shape == (64, 3, 32, 32)
    assert views.min() >= 0 and views.max() <= 1


# -- the random parameters -----------------------------------------------------------------------


def torchvision_boxes(n: int, height: int, width: int, scale, ratio, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    image = torch.empty(3, height, width)
    return torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
        dtype=torch.float64,
    )


@pytest.mark.parametrize(
    "height, width, scale, ratio",
    [
        (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),  # SimCLR's setting
        (24, 40, (0.5, 1.0), (1.5, 3.0)),  # wide boxes on a wide image, many trials fail
    ],
)
def test_crop_boxes_follow_torchvisions_distribution(height, width, scale, ratio):
    n = 20_000
    aug = SimCLRAugment(scale=scale, ratio=ratio)
    ours = aug.boxes(aug.sample(n, torch.Generator().manual_seed(5)), height, width).double()
    theirs = torchvision_boxes(n, height, width, scale, ratio, seed=6)
    area = height * width
    for name, a, b in [
        ("scale", ours[:, 2] * ours[:, 3] / area, theirs[:, 2] * theirs[:, 3] / area),
        ("ratio", ours[:, 3] / ours[:, 2], theirs[:, 3] / theirs[:, 2]),
        ("top", ours[:, 0], theirs[:, 0]),
        ("left", ours[:, 1], theirs[:, 1]),
    ]:
        result = stats.ks_2samp(a.numpy(), b.numpy())
        assert result.pvalue > 1e-3, (name, result)
    # The test has power: drawing the side length's fraction instead of the area's fails.
    sides = torch.sqrt(ours[:, 2] * ours[:, 3] / area)
    assert stats.ks_2samp(sides.numpy(), (theirs[:, 2] * theirs[:, 3] / area).numpy()).pvalue < 1e-6


def test_fallback_is_torchvisions_central_crop():
    # No trial can fit: boxes at least 3.5 times wider than high, area >= 90 %.
    aug = SimCLRAugment(scale=(0.9, 1.0), ratio=(3.5, 4.5))
    boxes = aug.boxes(aug.sample(100, torch.Generator().manual_seed(0)), 32, 32)
    expected = torchvision_boxes(1, 32, 32, (0.9, 1.0), (3.5, 4.5), seed=0)[0]
    assert expected.tolist() == [11, 0, 9, 32]
    assert (boxes == expected.long()).all()
    tall = SimCLRAugment(scale=(0.9, 1.0), ratio=(0.2, 0.25))
    boxes = tall.boxes(tall.sample(10, torch.Generator().manual_seed(0)), 32, 32)
    assert (boxes == torch.tensor([0, 12, 32, 8])).all()  # round(32 * 0.25) = 8 wide


def test_probabilities_and_factor_ranges_hold_over_many_samples():
    n = 100_000
    aug = SimCLRAugment(
        flip=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.3, solarize_p=0.1, jitter=(0.4, 0.3, 0.2, 0.1)
    )
    params = aug.sample(n, torch.Generator().manual_seed(7))
    for name, p in (
        ("flip", 0.5),
        ("jitter", 0.8),
        ("gray", 0.2),
        ("blur", 0.3),
        ("solarize", 0.1),
    ):
        rate = getattr(params, name).double().mean().item()
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), (name, rate)
    low, high = params.factors.min(dim=0).values, params.factors.max(dim=0).values
    torch.testing.assert_close(low, torch.tensor([0.6, 0.7, 0.8, -0.1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(high, torch.tensor([1.4, 1.3, 1.2, 0.1]), atol=1e-3, rtol=0)
    assert params.sigma.min() >= 0.1 and params.sigma.max() <= 2.0
    # All 24 orders of the four jitter operations, equally often (chi-square test).
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in params.order[:24_000].tolist():
        counts[tuple(row)] += 1
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_brightness_zero_means_no_change():
    aug = SimCLRAugment(
        jitter=(0.0, 0.0, 0.0, 0.0),
        jitter_p=1.0,
        normalize=False,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=0.0,
        gray_p=0.0,
    )
    x = images(8)
    torch.testing.assert_close(aug(x), x.float() / 255, atol=1e-6, rtol=0)


# -- reproducibility and independence --------------------------------------------------------


def test_same_seed_same_views_and_call_is_sample_then_apply():
    aug = SimCLRAugment(blur_p=0.5, solarize_p=0.2)
    x = images(32)
    first = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, aug(x, torch.Generator().manual_seed(4)))
    params = aug.sample(len(x), torch.Generator().manual_seed(3), x.device)
    assert torch.equal(first, aug.apply(x, params))
    torch.manual_seed(9)
    default = aug(x)
    torch.manual_seed(9)
    assert torch.equal(default, aug(x))


def test_each_image_draws_its_own_parameters():
    aug = SimCLRAugment()
    same = images(1).expand(64, -1, -1, -1).contiguous()
    views = aug(same, torch.Generator().manual_seed(0)).flatten(1)
    assert len(torch.unique(views, dim=0)) == 64


def test_a_view_depends_only_on_its_image_and_its_parameters():
    aug = SimCLRAugment(blur_p=0.5, solarize_p=0.5)
    x = images(16)
    params = aug.sample(16, torch.Generator().manual_seed(1))
    batch = aug.apply(x, params)
    for i in (0, 7, 15):
        alone = aug.apply(x[i : i + 1], params[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("image_size", [32, 48], ids=["enlarging", "shrinking"])
def test_no_value_is_read_on_the_host(image_size):
    """Drawing, moving and applying parameters, and a whole ViewBatches step, read no tensor
    value on the host (on a GPU each read would wait for the device), in every branch."""
    aug = SimCLRAugment(blur_p=0.5, solarize_p=0.5)
    x = images(8, size=image_size)
    with host_reads() as reads:
        views = aug(x, torch.Generator().manual_seed(0))
        params = aug.sample(8, torch.Generator().manual_seed(1), "cpu").to("cpu")
        aug.apply(x, params)
        aug.unaugmented(x)
        batches = [pair for pair in ViewBatches(x, 4, aug, seed=0, epoch=0)]
    assert reads == []
    assert views.shape == (8, 3, 32, 32) and len(batches) == 2
    with host_reads() as reads:  # the counter does see reads
        bool(views.max() > 0)
    assert reads == ["aten._local_scalar_dense.default"]


def test_parameters_go_to_an_accelerator_without_waiting_and_back_waiting(monkeypatch):
    params = SimCLRAugment().sample(4, torch.Generator().manual_seed(0))
    on_device = SimCLRAugment().sample(4, device="meta")  # stands for a GPU's tensors
    calls = []

    def record(self, device, non_blocking=False):
        calls.append((self.device.type, torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "to", record)
    params.to("meta")  # an accelerator, as far as the copy goes
    assert calls == [("cpu", "meta", True)] * 11
    calls.clear()
    params.to("cpu")
    assert calls == [("cpu", "cpu", False)] * 11
    calls.clear()
    on_device.to("cpu")  # to the host: the host must not read what has not arrived
    assert calls == [("meta", "cpu", False)] * 11


def test_rejects_images_that_are_not_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        SimCLRAugment()(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="probability"):
        SimCLRAugment(gray_p=1.5)


# -- batches of two views -------------------------------------------------------------------------


def numbered_images(n: int) -> torch.Tensor:
    """Image k holds k in its first pixels, so a view without augmentation tells its source."""
    x = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n) % 256
    x[:, 1, 0, 0] = torch.arange(n) // 256
    return x


def source_index(views: torch.Tensor) -> list[int]:
    pixels = (views[:, :2, 0, 0] * 255).round().long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


IDENTITY = dict(
    size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0, gray_p=0.0, normalize=False
)


def test_view_batches_shuffle_each_epoch_reproducibly_and_drop_the_last():
    x = numbered_images(100)
    aug = SimCLRAugment(**IDENTITY)
    batches = ViewBatches(x, 32, aug, seed=1, epoch=0)
    assert len(batches) == 3
    seen = [source_index(v1) for v1, _ in batches]
    assert [len(s) for s in seen] == [32, 32, 32]
    flat = sum(seen, [])
    assert len(set(flat)) == 96 and flat != sorted(flat)
    again = [source_index(v1) for v1, _ in ViewBatches(x, 32, aug, seed=1, epoch=0)]
    assert again == seen
    other_epoch = [source_index(v1) for v1, _ in ViewBatches(x, 32, aug, seed=1, epoch=1)]
    other_seed = [source_index(v1) for v1, _ in ViewBatches(x, 32, aug, seed=2, epoch=0)]
    assert other_epoch != seen and other_seed != seen
    for v1, v2 in ViewBatches(x, 32, aug, seed=1, epoch=0):
        assert source_index(v1) == source_index(v2)  # two views of the same images


def test_two_views_differ_and_batches_are_reproducible():
    x = images(64)
    aug = SimCLRAugment()
    first = list(ViewBatches(x, 16, aug, seed=3, epoch=2))
    second = list(ViewBatches(x, 16, aug, seed=3, epoch=2))
    for (a1, a2), (b1, b2) in zip(first, second, strict=True):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        assert not torch.equal(a1, a2)


def test_two_ranks_see_exactly_what_one_process_sees():
    x = images(80)
    aug = SimCLRAugment(blur_p=0.3)
    single = list(ViewBatches(x, 32, aug, seed=4, epoch=1))
    ranks = [list(ViewBatches(x, 32, aug, seed=4, epoch=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 2
    for step, (v1, v2) in enumerate(single):
        (a1, a2), (b1, b2) = ranks[0][step], ranks[1][step]
        assert a1.shape == (16, 3, 32, 32)
        torch.testing.assert_close(torch.cat([a1, b1]), v1, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.cat([a2, b2]), v2, atol=1e-6, rtol=0)


def test_view_batches_reject_impossible_settings():
    x = images(8)
    with pytest.raises(ValueError, match="split over 3 ranks"):
        ViewBatches(x, 4, SimCLRAugment(), seed=0, epoch=0, world_size=3)
    with pytest.raises(ValueError, match="rank 2"):
        ViewBatches(x, 4, SimCLRAugment(), seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="exceeds"):
        ViewBatches(x, 16, SimCLRAugment(), seed=0, epoch=0)
    with pytest.raises(ValueError, match=">= 0"):
        ViewBatches(x, 4, SimCLRAugment(), seed=-1, epoch=0)


def test_cpu_chunks_give_the_same_views_as_one_batch(monkeypatch):
    import dyntemp.augment as augment

    aug = SimCLRAugment()
    x = images(300)
    params = aug.sample(300, torch.Generator().manual_seed(8))
    chunked = aug.apply(x, params)
    assert 300 > augment.CPU_CHUNK_PIXELS // 32**2
    monkeypatch.setattr(augment, "CPU_CHUNK_PIXELS", 10**9)
    torch.testing.assert_close(aug.apply(x, params), chunked, atol=1e-6, rtol=0)


def test_benchmark_prints_both_pipelines_and_the_ratio(tmp_path, monkeypatch, capsys):
    from dyntemp.bench import augment as bench

    monkeypatch.setenv("DYNTEMP_DATA", str(tmp_path / "none"))  # random images
    argv = ["--batch", "16", "--rounds", "1", "--batches", "2", "--out", str(tmp_path / "o")]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "dyntemp, batches of 16" in out and "torchvision per image (PIL)" in out
    assert "random smooth images" in out and "goal on the CPU" in out
    saved = (tmp_path / "o" / "results.json").read_text()
    assert '"ratio"' in saved and '"command"' in saved
