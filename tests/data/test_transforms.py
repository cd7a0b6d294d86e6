"""The training augmentation: each part of the composed map does what the seed's transform did, and the draws
stay within the seed's ranges."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from protloc.data.transforms import Augmentation, augment_batch

NONE = dict(crop_padding_fraction=0.0, resized_crop_scale=(1.0, 1.0), resized_crop_ratio=(1.0, 1.0), hflip_prob=0.0,
            vflip_prob=0.0, right_angle_turns=False, rotation_degrees=0.0)


@pytest.fixture
def images() -> torch.Tensor:
    """uint8, as the loader hands them over."""
    return torch.randint(0, 256, (3, 2, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def drawn(augmentation: Augmentation, seed: int) -> torch.Tensor:
    # The CPU generator alone, which the draws use: torch.manual_seed would queue a seeding of every device kind's
    # generators too, formatting a stack trace for each (milliseconds a call, thousands of calls).
    torch.default_generator.manual_seed(seed)
    return augmentation.draw()


def augmented(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """On the 0..1 scale (mean 0, std 1), maps broadcast over the batch."""
    channels = images.shape[1]
    return augment_batch(images, maps.expand(len(images), 2, 3), torch.zeros(channels), torch.ones(channels))


def scaled(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def test_images_are_normalised_with_the_runs_mean_and_std(images):
    identity = drawn(Augmentation(**NONE), 0).expand(3, 2, 3)
    mean, std = torch.tensor([0.3, 0.6]), torch.tensor([0.2, 0.4])
    expected = (scaled(images) - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    torch.testing.assert_close(augment_batch(images, identity, mean, std), expected, atol=1e-5, rtol=1e-5)


def test_a_map_that_changes_nothing_returns_the_images(images):
    identity = drawn(Augmentation(**NONE), 0)
    assert torch.equal(identity, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(augmented(images, identity), scaled(images), atol=1e-5, rtol=0)


def test_flips_and_right_angle_turns_move_pixels_exactly(images):
    hflip = drawn(Augmentation(**{**NONE, "hflip_prob": 1.0}), 0)
    vflip = drawn(Augmentation(**{**NONE, "vflip_prob": 1.0}), 0)
    torch.testing.assert_close(augmented(images, hflip), scaled(images.flip(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(augmented(images, vflip), scaled(images.flip(-2)), atol=1e-5, rtol=0)
    turns = Augmentation(**{**NONE, "right_angle_turns": True})
    seen = set()
    for seed in range(40):
        turned = augmented(images, drawn(turns, seed))
        matches = [k for k in range(4) if torch.allclose(turned, scaled(images.rot90(k, dims=(-2, -1))), atol=1e-5)]
        assert len(matches) == 1
        seen.update(matches)
    assert seen == {0, 1, 2, 3}


def test_the_rotation_is_torchvisions_away_from_the_corners():
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image = TF.gaussian_blur(noise, [9, 9]).mul(255).round().to(torch.uint8)  # smooth, so that bilinear is fair
    rotation = Augmentation(**{**NONE, "rotation_degrees": 10.0})
    for seed in range(3):
        matrix = drawn(rotation, seed)
        degrees = math.degrees(math.atan2(float(matrix[1, 0]), float(matrix[0, 0])))
        assert 0.5 < abs(degrees) <= 10.0
        ours = augmented(image, matrix)
        theirs = TF.rotate(scaled(image), degrees, interpolation=v2.InterpolationMode.BILINEAR)
        y, x = torch.meshgrid(torch.arange(64) - 31.5, torch.arange(64) - 31.5, indexing="ij")
        inside = (x**2 + y**2).sqrt() < 28  # where neither reaches past the edge
        torch.testing.assert_close(ours[..., inside], theirs[..., inside], atol=1e-5, rtol=0)


def test_a_box_is_stretched_over_the_image_as_a_resized_crop_would(images):
    top_left_quarter = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]])
    expected = F.interpolate(scaled(images[..., :12, :12]), size=(24, 24), mode="bilinear", align_corners=False)
    # The last row and column sample between the box's edge and the pixels past it, which the crop keeps apart.
    torch.testing.assert_close(augmented(images, top_left_quarter)[..., :23, :23], expected[..., :23, :23],
                               atol=1e-5, rtol=0)


def test_past_the_edge_the_image_is_mirrored(images):
    shift = 3  # pixels to the right: the last three columns come from past the right edge
    shifted = torch.tensor([[1.0, 0.0, 2 * shift / 24], [0.0, 1.0, 0.0]])
    mirrored = torch.cat([images[..., shift:], images[..., -shift:].flip(-1)], dim=-1)
    torch.testing.assert_close(augmented(images, shifted), scaled(mirrored), atol=1e-5, rtol=0)


def test_draws_stay_within_the_seeds_ranges():
    augmentation = Augmentation()
    maps = torch.stack([drawn(augmentation, seed) for seed in range(2000)])
    widths, heights = maps[:, 0, :2].norm(dim=1), maps[:, 1, :2].norm(dim=1)  # each row is a box side times a unit vector
    assert widths.max() <= 1.0 + 1e-6 and heights.max() <= 1.0 + 1e-6
    areas = widths * heights
    assert areas.min() >= 0.5 - 1e-5 and areas.max() > 0.97
    assert (widths / heights).min() >= 0.9 - 1e-5 and (widths / heights).max() <= 1.1 + 1e-5
    padding = 2 * augmentation.crop_padding_fraction
    assert ((maps[:, 0, 2].abs() - (1 - widths)) <= padding + 1e-6).all()
    assert ((maps[:, 1, 2].abs() - (1 - heights)) <= padding + 1e-6).all()
    # The rotation part: the angle between the image's axes and the box's, up to right-angle turns and flips.
    unit = maps[:, :, :2] / torch.stack([widths, heights], dim=1)[..., None]
    degrees = torch.rad2deg(torch.atan2(unit[:, 0, 1], unit[:, 0, 0]))
    off_axis = torch.remainder(degrees + 45, 90) - 45
    assert off_axis.abs().max() <= 10.0 + 1e-4 and off_axis.abs().max() > 9.5
    # All eight symmetries of the square, each about equally often.
    symmetry = torch.stack([unit[:, 0, 0], unit[:, 0, 1], unit[:, 1, 0], unit[:, 1, 1]], dim=1).round()
    counts = torch.unique(symmetry, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > 180


@pytest.mark.parametrize("smallest", [0.5, 0.8])
def test_resized_crops_keep_at_least_the_smallest_share_of_the_area_and_reach_it(smallest):
    maps = torch.stack([drawn(Augmentation(resized_crop_scale=(smallest, 1.0)), seed) for seed in range(500)])
    areas = maps[:, 0, :2].norm(dim=1) * maps[:, 1, :2].norm(dim=1)
    assert areas.min() >= smallest - 1e-5 and areas.min() < smallest + 0.02 and areas.max() > 0.97


def test_from_a_copy_twice_the_size_the_whole_image_is_its_2x2_means(images):
    identity = drawn(Augmentation(**NONE), 0).expand(3, 2, 3)
    zeros, ones = torch.zeros(2), torch.ones(2)
    out = augment_batch(images, identity, zeros, ones, out_size=12)
    torch.testing.assert_close(out, F.avg_pool2d(scaled(images), 2), atol=1e-5, rtol=0)


def test_a_zoomed_crop_from_the_larger_copy_keeps_detail_the_input_size_copy_has_lost():
    # A 1-pixel checkerboard at 48 px: resized to the 24 px input size it is a flat grey.
    board = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) % 2 * 255).to(torch.uint8).expand(1, 1, 48, 48)
    small = v2.Resize((24, 24), antialias=True)(board)
    half_side = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]).expand(1, 2, 3)  # the central quarter, zoomed 2x
    zeros, ones = torch.zeros(1), torch.ones(1)
    from_small = augment_batch(small, half_side, zeros, ones)
    from_large = augment_batch(board.contiguous(), half_side, zeros, ones, out_size=24)
    assert from_small.std() < 0.05  # nothing left to zoom into
    assert from_large.std() > 0.4  # the checkerboard, at its own pixels
