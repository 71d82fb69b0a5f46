"""Semi-synthetic multi-rater lung nodules: the real outlines of LIDC-IDRI radiologists (sdseg.data.lidc) placed on
real lung CT texture with a documented appearance model. The raters' disagreement is real; the images are not real
nodules. Data sets made this way say so in dataset.json (``semi_synthetic``, source, description) and every
``sdseg evaluate`` report.

One example (HU, on a LIDC_CROP x LIDC_CROP grid of LIDC_GRID_MM pixels, as the real LIDC crops):

1. Shapes: one slice of one nodule that at least one radiologist outlined; each reading rasterised on the grid
   centred on the nodule shifted by up to +-CENTRE_JITTER of the crop; ``n_raters`` masks, missing raters empty.
2. Texture: the same grid cut from a texture CT slice (:class:`TextureSlice`), centred on a lung pixel: below LUNG_HU,
   in a region touching no slice border (not the air around the body), LUNG_MARGIN_MM inside the lung's edge.
3. Opacity: a = Gaussian(EDGE_SIGMA_MM) of the fraction of the MAX_RATERS radiologists whose outline covers the
   pixel: opaque where all four drew the nodule, faint where one of four did (the region raters disagree on).
4. Density: mean HU from the readings' texture rating t (1 ground glass .. 5 solid),
   GROUND_GLASS_HU + (t - 1) / 4 (SOLID_HU - GROUND_GLASS_HU), plus N(0, DENSITY_JITTER_HU) per nodule; inside
   it smooth noise (HETEROGENEITY_SIGMA_MM) of HETEROGENEITY_HU standard deviation.
5. image = texture (1 - a) + (density + heterogeneity + noise) a, with white noise of the texture's own level
   (1.4826 x the median absolute deviation of texture minus its 1-pixel Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sdseg.data.lidc import LIDC_CROP, LIDC_GRID_MM, MAX_RATERS, Nodule, crop_grid, resample_slice
from sdseg.data.lung_sources import AIR_HU
from sdseg.data.synthetic import gaussian_smooth, smooth_noise

LUNG_HU = -400.0
LUNG_MARGIN_MM = 8.0
MIN_LUNG_PIXELS = 2000  # slices with less lung than this give no texture
CENTRE_JITTER = 0.1
EDGE_SIGMA_MM = 0.5
GROUND_GLASS_HU = -650.0
SOLID_HU = 30.0
DENSITY_JITTER_HU = 40.0
HETEROGENEITY_SIGMA_MM = 1.5
HETEROGENEITY_HU = 40.0
SLAB_FRACTIONS = {"test": (0.0, 0.2), "val": (0.2, 0.4), "train": (0.4, 1.0)}  # of a texture CT's lung slices
SLAB_GAP = 1  # slices left out between two slabs


@dataclass(frozen=True)
class TextureSlice:
    image: np.ndarray  # (rows, columns) HU
    pixel_spacing: float  # mm
    lung_centres: np.ndarray  # (N, 2) (column, row) of the lung pixels a crop may be centred on


def lung_centres(slice_hu: np.ndarray, pixel_spacing: float) -> np.ndarray:
    """(N, 2) (column, row) of the pixels below LUNG_HU in regions touching no slice border, at least
    LUNG_MARGIN_MM inside them."""
    low = sitk.GetImageFromArray((slice_hu < LUNG_HU).astype(np.uint8))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(low))
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    lung = (labels > 0) & ~np.isin(labels, border)
    radius = max(1, int(round(LUNG_MARGIN_MM / pixel_spacing)))
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(lung.astype(np.uint8)), [radius] * 2))
    rows, cols = np.nonzero(inner)
    return np.column_stack([cols, rows])


def lung_slices(image_kji: np.ndarray, pixel_spacing: float) -> list[TextureSlice]:
    """A texture CT's slices with enough lung (MIN_LUNG_PIXELS), in slice order."""
    usable = []
    for slice_hu in image_kji:
        centres = lung_centres(slice_hu, pixel_spacing)
        if len(centres) >= MIN_LUNG_PIXELS:
            usable.append(TextureSlice(slice_hu, pixel_spacing, centres))
    return usable


def texture_slabs(usable: list[TextureSlice]) -> dict[str, list[TextureSlice]]:
    """One CT's lung slices (:func:`lung_slices`) split into contiguous slabs per split (SLAB_FRACTIONS of them,
    SLAB_GAP slices apart) so no slice gives texture to two splits."""
    slabs = {}
    for split, (start, stop) in SLAB_FRACTIONS.items():
        first = int(round(start * len(usable))) + (SLAB_GAP if start > 0 else 0)
        slabs[split] = usable[first:int(round(stop * len(usable)))]
    return slabs


def texture_crop(texture: TextureSlice, rng: np.random.Generator) -> np.ndarray:
    """A LIDC_CROP x LIDC_CROP crop (LIDC_GRID_MM pixels, HU) of the texture centred on a random lung pixel."""
    centre = texture.lung_centres[rng.integers(len(texture.lung_centres))]
    return resample_slice(texture.image, crop_grid(centre, texture.pixel_spacing), LIDC_CROP, AIR_HU)


def noise_level(image: np.ndarray) -> float:
    """Robust standard deviation of an image's pixel noise: 1.4826 x MAD of image - Gaussian(1 px)(image)."""
    residual = image - gaussian_smooth(image, 1.0)
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def nodule_density(nodule: Nodule, rng: np.random.Generator) -> float:
    """Mean HU of the nodule from its readings' texture rating (step 4 of the module docstring)."""
    mean = GROUND_GLASS_HU + (nodule.texture - 1.0) / 4.0 * (SOLID_HU - GROUND_GLASS_HU)
    return float(mean + rng.normal(0.0, DENSITY_JITTER_HU))


def semisynthetic_example(nodule: Nodule, z: float, texture: TextureSlice, n_raters: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image HU float32 (LIDC_CROP, LIDC_CROP), masks uint8 (n_raters, LIDC_CROP, LIDC_CROP)): the nodule's
    slice at ``z`` on a crop of ``texture`` (module docstring)."""
    shift = rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2) * LIDC_CROP * LIDC_GRID_MM / nodule.pixel_spacing
    to_grid = crop_grid(nodule.centre + shift, nodule.pixel_spacing)
    readings = nodule.masks(z, to_grid, (LIDC_CROP, LIDC_CROP), MAX_RATERS)
    opacity = gaussian_smooth(readings.mean(axis=0, dtype=np.float64), EDGE_SIGMA_MM / LIDC_GRID_MM)
    background = texture_crop(texture, rng)
    inside = (nodule_density(nodule, rng)
              + HETEROGENEITY_HU * smooth_noise(background.shape, rng, HETEROGENEITY_SIGMA_MM / LIDC_GRID_MM)
              + rng.normal(0.0, noise_level(background), background.shape))
    image = background * (1.0 - opacity) + inside * opacity
    order = rng.permutation(MAX_RATERS)[:n_raters] if n_raters < MAX_RATERS else np.arange(MAX_RATERS)
    masks = np.zeros((n_raters, LIDC_CROP, LIDC_CROP), dtype=np.uint8)
    masks[:len(order)] = readings[order]
    return image.astype(np.float32), masks
