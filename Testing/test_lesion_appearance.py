"""sdseg.data.lesion_appearance: a real lesion's contrast, interior texture and size measured on a crop, and
synthetic lesions drawn with them, checked against independent numpy computations (Euclidean distances)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sdseg.data.lesion_appearance import (LesionAppearance, MIN_LESION_PIXELS, draw_appearance, measure_appearance,
                                          real_appearance_crop)
from sdseg.data.synthetic import smooth_noise
from test_data_synthetic import distance_to


def test_a_disk_of_known_brightness_measures_as_drawn():
    yy, xx = np.mgrid[0:64, 0:64]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 <= 8 ** 2
    image = np.where(disk, 0.6, 0.1)
    appearance = measure_appearance(image[None], np.stack([disk, disk, ~disk & disk]).astype(np.uint8))
    assert appearance.contrast == pytest.approx(0.5) and appearance.interior_std == pytest.approx(0.0)
    assert appearance.radius == pytest.approx(np.sqrt(disk.sum() / np.pi) / 64)
    tiny = np.zeros((1, 64, 64), dtype=np.uint8)
    tiny[0, 10:13, 10:13] = 1  # 9 pixels
    assert tiny.sum() < MIN_LESION_PIXELS and measure_appearance(image, tiny) is None
    assert measure_appearance(image, np.zeros((2, 64, 64), dtype=np.uint8)) is None


@pytest.mark.parametrize("appearance", [LesionAppearance(0.7, 0.05, 0.06), LesionAppearance(-0.4, 0.12, 0.3),
                                        LesionAppearance(0.1, 0.03, 0.15)])
def test_synthetic_lesions_measure_as_the_real_appearance_they_were_given(appearance):
    texture = 0.2 * smooth_noise((64, 64), np.random.default_rng(1), 3.0)
    measured = []
    for seed in range(8):
        image, masks = real_appearance_crop(texture, 3, np.random.default_rng(seed), appearance)
        assert image.shape == (1, 64, 64) and image.dtype == np.float32 and masks.shape == (3, 64, 64)
        lesion = masks.mean(0) >= 0.5
        distance = distance_to(lesion)
        ring = (distance > 1) & (distance <= 4)
        interior = distance_to(~lesion) > 1.5
        measured.append((image[0][lesion].mean() - image[0][ring].mean(), image[0][interior].std(),
                         np.sqrt(lesion.sum() / np.pi) / 64))
        away = distance > 6  # the blend reaches 3 pixels along each axis of the blob, the raters 1-2 more
        assert np.array_equal(image[0][away], texture.astype(np.float32)[away])
    # each draw within the raters' outline uncertainty (+-1 pixel of a 4-pixel lesion), the mean as given
    measured = np.array(measured)
    assert np.abs(measured[:, 0] - appearance.contrast).max() < 0.15
    assert measured[:, 0].mean() == pytest.approx(appearance.contrast, abs=0.06)
    assert measured[:, 1].mean() == pytest.approx(appearance.interior_std, abs=0.04)
    assert measured[:, 2].mean() == pytest.approx(appearance.radius, rel=0.15)


def test_each_patient_is_drawn_as_often_however_many_crops_it_has():
    per_patient = {"many": [LesionAppearance(0.5, 0.1, 0.2)] * 99, "one": [LesionAppearance(0.1, 0.1, 0.05)]}
    rng = np.random.default_rng(0)
    counts = Counter(draw_appearance(per_patient, rng).contrast for _ in range(2000))
    assert 900 < counts[0.1] < 1100 and counts[0.1] + counts[0.5] == 2000
