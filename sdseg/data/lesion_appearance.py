"""Lesion appearance measured on real lesion crops and given to synthetic lesions (numpy only).

A real lesion crop (image in [-1, 1], rater masks) is summarised by :func:`measure_appearance` as three numbers
(:class:`LesionAppearance`), all on the raters' majority mask:

- ``contrast``: mean intensity inside the lesion less the mean of the ring of tissue around it (the pixels
  :data:`RING_PIXELS` [1, 4] pixels outside its border): the lesion's brightness against its surroundings;
- ``interior_std``: the standard deviation inside the lesion eroded by one pixel (its own texture, without the
  partial-volume border);
- ``radius``: the radius of the disk of the lesion's area, a fraction of the crop side.

:func:`render_lesion` draws a synthetic lesion with one such appearance on a texture: the lesion *replaces* the
tissue under it (a tumour hides what it displaces) by the ring's mean plus the contrast, with smooth interior texture
of the measured standard deviation, blended over a partial-volume border; so its measured appearance is the one
drawn (Testing/test_lesion_appearance.py). `sdseg preprocess --add-synthetic` draws the appearance of each synthetic
lesion from the train split's real lesion crops (:func:`draw_appearance`: a patient, then one of its crops), so
that the contrast (sign and magnitude), interior texture and size follow real lesions instead of generic ranges
(sdseg.data.synthetic.single_lesion_crop, `--lesion-appearance generic`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sdseg.data.synthetic import gaussian_smooth, grow_or_shrink, lesion_mask, rater_masks, smooth_noise

RING_PIXELS = (1, 4)  # the surrounding tissue: from this many pixels outside the lesion's border to this many
MIN_LESION_PIXELS = 12  # smaller lesions (a few pixels at a lesion's end) give no reliable interior or ring
INTERIOR_TEXTURE_SIGMA = 1.0  # pixels: correlation length of a synthetic lesion's interior texture
RADIUS_SPREAD = 0.15  # a synthetic lesion's semi-axes are the drawn radius times 1 +- this
PARTIAL_VOLUME_SIGMA = 0.7  # pixels: the blend of the lesion into its surroundings

REAL_APPEARANCE_DESCRIPTION = (
    "Synthetic single-lesion crops made by sdseg.data.lesion_appearance.real_appearance_crop: one blob per crop (an "
    "ellipse with a boundary perturbed by harmonics 2-4 of the polar angle) whose contrast against the ring of tissue "
    f"{RING_PIXELS[0]}-{RING_PIXELS[1]} pixels around it, interior standard deviation and size (semi-axes the radius "
    f"of its area +- {RADIUS_SPREAD:.0%}) are those of one real lesion crop of the train split (a patient drawn "
    "uniformly, then one of its crops; real_lesions), replacing the tissue under it on {texture}; each rater grows "
    "or shrinks it by -1, 0 or 1 pixel and adds smooth boundary noise.")


class LesionAppearance(NamedTuple):
    contrast: float
    interior_std: float
    radius: float


def ring_around(mask: np.ndarray) -> np.ndarray:
    """The pixels between :data:`RING_PIXELS` [0] and [1] pixels outside the boolean ``mask``."""
    return grow_or_shrink(mask, RING_PIXELS[1]) & ~grow_or_shrink(mask, RING_PIXELS[0])


def measure_appearance(image: np.ndarray, masks: np.ndarray) -> LesionAppearance | None:
    """The appearance of the lesion of one crop: ``image`` (S, S) or (1, S, S) in [-1, 1], ``masks`` (R, S, S);
    None when the raters' majority marks fewer than :data:`MIN_LESION_PIXELS` pixels or the lesion has no interior
    or no surroundings in the crop."""
    image = np.asarray(image, dtype=np.float64).reshape(np.shape(masks)[-2:])
    lesion = np.asarray(masks).mean(axis=0) >= 0.5
    if lesion.sum() < MIN_LESION_PIXELS:
        return None
    ring, interior = ring_around(lesion), grow_or_shrink(lesion, -1)
    if not ring.any() or interior.sum() < 2:
        return None
    return LesionAppearance(contrast=float(image[lesion].mean() - image[ring].mean()),
                            interior_std=float(image[interior].std()),
                            radius=float(np.sqrt(lesion.sum() / np.pi) / lesion.shape[0]))


def draw_appearance(per_patient: dict[str, list[LesionAppearance]], rng: np.random.Generator) -> LesionAppearance:
    """One real appearance: a patient drawn uniformly (a patient with many crops counts once), then one of its
    crops."""
    patients = sorted(per_patient)
    crops = per_patient[patients[int(rng.integers(len(patients)))]]
    return crops[int(rng.integers(len(crops)))]


def radius_range(appearance: LesionAppearance) -> tuple[float, float]:
    """The semi-axis range (fractions of the crop) of a synthetic lesion of ``appearance``'s size."""
    return appearance.radius * (1.0 - RADIUS_SPREAD), appearance.radius * (1.0 + RADIUS_SPREAD)


def render_lesion(lesion: np.ndarray, texture: np.ndarray, appearance: LesionAppearance,
                  rng: np.random.Generator) -> np.ndarray:
    """Image (S, S) float32 in [-1, 1]: the boolean ``lesion`` drawn with ``appearance`` on ``texture`` (S, S) in
    [-1, 1]. Inside, the ring's mean on the texture plus the contrast, plus ``interior_std`` times smooth noise
    (sigma :data:`INTERIOR_TEXTURE_SIGMA`); blended into the texture by the lesion smoothed with
    :data:`PARTIAL_VOLUME_SIGMA`. The blend mixes lesion into the ring and tissue into the lesion's border, which
    lowers the contrast :func:`measure_appearance` finds; the contrast drawn is raised by that factor, so that the
    lesion measures as the real one did (with its own partial volume)."""
    texture = np.asarray(texture, dtype=np.float64)
    ring = ring_around(lesion)
    weight = gaussian_smooth(lesion.astype(np.float64), PARTIAL_VOLUME_SIGMA)
    blend = weight[lesion].mean() - weight[ring].mean()  # the blend lowers a measured contrast by this factor
    level = texture[ring].mean() + appearance.contrast / blend
    interior = level + appearance.interior_std * smooth_noise(texture.shape, rng, INTERIOR_TEXTURE_SIGMA)
    return np.clip((1.0 - weight) * texture + weight * interior, -1.0, 1.0).astype(np.float32)


def real_appearance_crop(texture: np.ndarray, n_raters: int, rng: np.random.Generator,
                         appearance: LesionAppearance) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lesion of ``appearance`` on ``texture`` (S, S) in [-1, 1]: (image (1, S, S) float32, masks
    (n_raters, S, S) uint8). The blob and its raters are those of sdseg.data.synthetic.single_lesion_crop (one
    perturbed ellipse, semi-axes :func:`radius_range`; each rater grows or shrinks it by up to a pixel); the image
    is :func:`render_lesion`'s."""
    lesion = lesion_mask(texture.shape[0], rng, max_lesions=1, radius_range=radius_range(appearance)) > 0
    masks = rater_masks(lesion.astype(np.int32), n_raters, rng)
    return render_lesion(lesion, texture, appearance, rng)[None], masks


def appearance_summary(per_patient: dict[str, list[LesionAppearance]]) -> dict:
    """dataset.json's record of the measured appearances: crops per patient and the 5 / 50 / 95 % percentiles of
    each measure over every crop."""
    every = [appearance for crops in per_patient.values() for appearance in crops]
    return {"crops": {patient: len(crops) for patient, crops in sorted(per_patient.items())},
            **{name: [round(float(v), 4) for v in np.percentile([getattr(a, name) for a in every], [5, 50, 95])]
               for name in LesionAppearance._fields}}
