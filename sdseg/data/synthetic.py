"""Synthetic lesion-like multi-rater data (numpy only).

One example is made in four steps, each a function usable on its own:

1. :func:`lesion_mask` - a label map of 1..K smooth, non-overlapping blobs (ellipses whose boundary radius is
   perturbed by a few random harmonics);
2. :func:`lesion_contrasts` - a signed contrast per lesion; lesions with ``|contrast| < FAINT_CONTRAST`` are faint;
3. :func:`rater_masks` - R rater masks: each rater grows or shrinks every lesion by its own random radius and adds
   smooth boundary noise, and a faint lesion is marked by only some of the raters;
4. :func:`render_image` - the image: the lesions, with their contrasts, on a texture (a crop of a real image
   when given, else smooth noise), plus pixel noise, in [-1, 1].

:func:`make_shapes_dataset` writes a crops data set (docs/architecture.md "Data sets") made this way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FAINT_CONTRAST = 0.25
SPLITS = ("train", "val", "test")
PREPROCESSING = {"normalization": "percentile", "percentiles": [0.5, 99.5]}


def gaussian_smooth(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian filter of a 2D array (reflecting borders), truncated at 3 sigma."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    result = np.asarray(array, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(result, pad, mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.size, axis=axis)
        result = windows @ kernel
    return result


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """White noise smoothed with a Gaussian of ``sigma`` pixels, rescaled to zero mean and unit std."""
    field = gaussian_smooth(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / max(field.std(), 1e-12)


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]


def _shifted(mask: np.ndarray, dy: int, dx: int, fill: bool) -> np.ndarray:
    """``mask`` moved by (dy, dx); uncovered pixels get ``fill``."""
    height, width = mask.shape
    out = np.full_like(mask, fill)
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        mask[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def grow_or_shrink(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation (``radius > 0``) or erosion (``radius < 0``) of a boolean mask by a disk of ``|radius|``."""
    if radius == 0:
        return mask.copy()
    shifts = [_shifted(mask, dy, dx, fill=radius < 0) for dy, dx in _disk_offsets(abs(radius))]
    return np.logical_or.reduce(shifts) if radius > 0 else np.logical_and.reduce(shifts)


def _perturbed_ellipse(size: int, rng: np.random.Generator, radius_range: tuple[float, float]) -> np.ndarray:
    """Boolean mask of one blob: an ellipse whose radius is modulated by harmonics 2..4 of the polar angle."""
    radii = rng.uniform(*radius_range, size=2) * size
    margin = radii.max() + 1.0
    centre = rng.uniform(margin, size - 1 - margin, size=2) if size - 1 > 2 * margin else np.full(2, (size - 1) / 2)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / radii[0]
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radii[1]
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for harmonic in (2, 3, 4):
        boundary += rng.uniform(0.0, 0.25) / harmonic * np.cos(harmonic * theta + rng.uniform(0.0, 2.0 * np.pi))
    return np.hypot(u, v) < boundary


def lesion_mask(size: int, rng: np.random.Generator, max_lesions: int = 3,
                radius_range: tuple[float, float] = (0.08, 0.2), attempts: int = 20) -> np.ndarray:
    """Label map (size, size) int32 of 1..K smooth lesions (0 = background), 1 <= K <= ``max_lesions``.

    Each lesion is a perturbed ellipse with semi-axes drawn from ``radius_range`` (fractions of ``size``);
    lesions do not touch (a new blob overlapping a grown copy of the others is redrawn, up to ``attempts`` times,
    and left out after that). The first lesion is always placed.
    """
    wanted = int(rng.integers(1, max_lesions + 1))
    labels = np.zeros((size, size), dtype=np.int32)
    for _ in range(wanted):
        for _ in range(attempts):
            blob = _perturbed_ellipse(size, rng, radius_range)
            if blob.any() and not (grow_or_shrink(labels > 0, 2) & blob).any():
                labels[blob] = labels.max() + 1
                break
    return labels


def lesion_contrasts(n_lesions: int, rng: np.random.Generator, faint_probability: float = 0.3) -> np.ndarray:
    """Signed contrast (n_lesions,) float64: one sign per image (bright or dark lesions); a lesion is faint
    (``|c|`` in [0.1, 0.2), below ``FAINT_CONTRAST``) with ``faint_probability``, else ``|c|`` in [0.35, 0.8)."""
    sign = rng.choice((-1.0, 1.0))
    faint = rng.random(n_lesions) < faint_probability
    magnitude = np.where(faint, rng.uniform(0.1, 0.2, n_lesions), rng.uniform(0.35, 0.8, n_lesions))
    return sign * magnitude


def _faint_markers(n_raters: int, rng: np.random.Generator, mark_probability: float) -> np.ndarray:
    """Which raters mark one faint lesion: each with ``mark_probability``, but never all and never none
    (with a single rater, that rater marks it)."""
    marks = rng.random(n_raters) < mark_probability
    if n_raters == 1:
        return np.ones(1, dtype=bool)
    if not marks.any():
        marks[rng.integers(n_raters)] = True
    elif marks.all():
        marks[rng.integers(n_raters)] = False
    return marks


def rater_masks(labels: np.ndarray, n_raters: int, rng: np.random.Generator, contrasts: np.ndarray | None = None,
                max_radius: int = 1, boundary_noise: float = 0.2, noise_sigma: float = 2.0,
                mark_probability: float = 0.5) -> np.ndarray:
    """Masks (n_raters, H, W) uint8 of ``n_raters`` raters annotating the lesions of the label map ``labels``.

    Rater r draws a radius in [-max_radius, max_radius] and grows (> 0) or shrinks (< 0) every lesion by it (a
    lesion that would vanish keeps its true shape), then perturbs the boundary: the mask, smoothed with a
    Gaussian of 1 pixel, plus ``boundary_noise`` times smooth noise (clipped to +-2 std so that it can move the
    boundary by about a pixel but never create or delete a whole region), thresholded at 0.5. A faint lesion
    (``|contrasts[k-1]| < FAINT_CONTRAST``) is marked by a random non-empty proper subset of the raters (each with
    ``mark_probability``); ``contrasts=None`` means no lesion is faint.
    """
    n_lesions = int(labels.max())
    if contrasts is not None and len(contrasts) != n_lesions:
        raise ValueError(f"contrasts has {len(contrasts)} entries but labels has {n_lesions} lesions")
    faint = np.zeros(n_lesions, dtype=bool) if contrasts is None else np.abs(contrasts) < FAINT_CONTRAST
    marked = np.ones((n_raters, n_lesions), dtype=bool)
    for k in np.flatnonzero(faint):
        marked[:, k] = _faint_markers(n_raters, rng, mark_probability)
    masks = np.zeros((n_raters, *labels.shape), dtype=np.uint8)
    for rater in range(n_raters):
        radius = int(rng.integers(-max_radius, max_radius + 1))
        noise = boundary_noise * np.clip(smooth_noise(labels.shape, rng, noise_sigma), -2.0, 2.0)
        for k in np.flatnonzero(marked[rater]):
            lesion = labels == k + 1
            outline = grow_or_shrink(lesion, radius)
            if not outline.any():
                outline = lesion
            masks[rater] |= (gaussian_smooth(outline, 1.0) + noise > 0.5).astype(np.uint8)
    return masks


def render_image(labels: np.ndarray, contrasts: np.ndarray, rng: np.random.Generator,
                 texture: np.ndarray | None = None, noise_std: float = 0.05) -> np.ndarray:
    """Image (H, W) float32 in [-1, 1]: ``texture`` + lesions + Gaussian pixel noise of ``noise_std``.

    ``texture`` is an (H, W) array already normalised to [-1, 1], e.g. a crop of a normalised real image; without
    it the background is smooth noise at two scales. Lesion k adds ``contrasts[k-1]`` times its mask, softened by
    a 0.7-pixel Gaussian (partial volume) and modulated by +-20 % smooth noise (heterogeneous lesions).
    """
    if len(contrasts) != int(labels.max()):
        raise ValueError(f"contrasts has {len(contrasts)} entries but labels has {int(labels.max())} lesions")
    shape = labels.shape
    if texture is None:
        background = 0.15 * smooth_noise(shape, rng, shape[0] / 8.0) + 0.05 * smooth_noise(shape, rng, 1.5)
    else:
        if texture.shape != shape:
            raise ValueError(f"texture shape {texture.shape} does not match the lesion map shape {shape}")
        background = np.asarray(texture, dtype=np.float64)
    heterogeneity = 1.0 + 0.2 * np.clip(smooth_noise(shape, rng, 1.5), -2.0, 2.0)
    lesions = np.zeros(shape)
    for k, contrast in enumerate(contrasts, start=1):
        lesions += contrast * gaussian_smooth(labels == k, 0.7)
    image = background + lesions * heterogeneity + noise_std * rng.standard_normal(shape)
    return np.clip(image, -1.0, 1.0).astype(np.float32)


# Lesion semi-axes of :func:`single_lesion_crop`, fractions of the crop: real lesion crops run from a small nodule in
# a 96-voxel ROI (~0.05) to a tumour filling its ROI, which is 1.2 x the lesion (~0.4).
SINGLE_LESION_RADII = (0.05, 0.4)


def single_lesion_crop(texture: np.ndarray, n_raters: int, rng: np.random.Generator,
                       radius_range: tuple[float, float] = SINGLE_LESION_RADII) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lesion on ``texture`` (S, S) in [-1, 1]: (image (1, S, S) float32, masks (n_raters, S, S)
    uint8), made by steps 1-4 above with a single blob, so that a click or box drawn from the masks points at the
    whole object (the prompt-conditioned training of sdseg.prompt_maps). No lesion is faint: faint lesions stand for
    the lesions only some raters see, and a lone rater marking an invisible one would teach the model to draw
    lesions where the image shows none."""
    labels = lesion_mask(texture.shape[0], rng, max_lesions=1, radius_range=radius_range)
    contrasts = lesion_contrasts(1, rng, faint_probability=0.0)
    masks = rater_masks(labels, n_raters, rng, contrasts)
    return render_image(labels, contrasts, rng, texture)[None], masks


def _texture_crop(texture_images, size: int, rng: np.random.Generator) -> np.ndarray:
    image = np.asarray(texture_images[int(rng.integers(len(texture_images)))], dtype=np.float64)
    top = int(rng.integers(image.shape[0] - size + 1))
    left = int(rng.integers(image.shape[1] - size + 1))
    return image[top:top + size, left:left + size]


def _check_textures(texture_images, size: int) -> None:
    if len(texture_images) == 0:
        raise ValueError("texture_images is empty; pass None for smooth-noise textures")
    for index, image in enumerate(texture_images):
        shape = np.shape(image)
        if len(shape) != 2 or shape[0] < size or shape[1] < size:
            raise ValueError(f"texture_images[{index}] has shape {shape}; each texture must be a 2D array of at "
                             f"least {size}x{size} (the image size), normalised to [-1, 1]")


GENERATOR_DESCRIPTION = (
    "Synthetic lesion-like multi-rater crops made by sdseg.data.synthetic.make_shapes_dataset: each crop holds "
    "1-3 non-touching blobs (ellipses with a boundary perturbed by harmonics 2-4 of the polar angle) drawn with a "
    "signed contrast on {texture}, with Gaussian pixel noise. About 30 % of the lesions are faint (|contrast| < "
    f"{FAINT_CONTRAST}). Each of the raters grows or shrinks every lesion by a random radius of -1, 0 or 1 pixel "
    "and adds smooth boundary noise; a faint lesion is marked by only some of the raters (never all, never none). "
    "Each crop is its own 'patient'.")


SINGLE_LESION_DESCRIPTION = (
    "Synthetic single-lesion crops made by sdseg.data.synthetic.single_lesion_crop: one blob per crop (an ellipse "
    "with semi-axes of {radii[0]:.0%}-{radii[1]:.0%} of the crop and a boundary perturbed by harmonics 2-4 of the "
    "polar angle), drawn with a signed contrast that is never faint on {texture}, with Gaussian pixel "
    "noise; each rater grows or shrinks it by -1, 0 or 1 pixel and adds smooth boundary noise.")


def make_shapes_dataset(out_dir, n_train: int, n_val: int, n_test: int, image_size: int = 64, n_raters: int = 4,
                        seed: int = 0, texture_images=None, info: dict | None = None) -> Path:
    """Write a synthetic multi-rater crops data set into the new or empty folder ``out_dir`` and return its path.

    ``texture_images``: optional 2D arrays normalised to [-1, 1], each at least ``image_size`` square; every crop
    then uses a random window of a random one as its background (else smooth noise). ``info`` overrides entries
    of ``dataset.json`` (e.g. ``name``, ``source``, ``licence`` of the textures). Example i of a split is drawn
    from ``numpy.random.default_rng([seed, split number, i])``: the same arguments give the same files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; choose a new or empty folder for the data set")
    if n_raters < 1 or image_size < 8:
        raise ValueError(f"need n_raters >= 1 and image_size >= 8, got {n_raters} and {image_size}")
    if texture_images is not None:
        _check_textures(texture_images, image_size)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split_number, split in enumerate(SPLITS):
        (out_dir / split).mkdir(parents=True)
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, split_number, index])
            labels = lesion_mask(image_size, rng)
            contrasts = lesion_contrasts(int(labels.max()), rng)
            masks = rater_masks(labels, n_raters, rng, contrasts)
            texture = None if texture_images is None else _texture_crop(texture_images, image_size, rng)
            image = render_image(labels, contrasts, rng, texture)
            np.savez_compressed(out_dir / split / f"{split}-{index:05d}.npz", image=image[None], masks=masks,
                                patient=np.str_(f"synthetic-{split}-{index:05d}"))
    texture = ("smooth-noise textures" if texture_images is None
               else f"random crops of {len(texture_images)} caller-supplied texture images")
    dataset = {
        "name": "synthetic-shapes",
        "source": f"generated by sdseg.data.synthetic.make_shapes_dataset (seed {seed})",
        "licence": "CC0-1.0" if texture_images is None else "see the source of the texture images",
        "image_size": image_size,
        "preprocessing": PREPROCESSING,
        "n_raters": n_raters,
        "synthetic": True,
        "description": GENERATOR_DESCRIPTION.format(texture=texture),
        "counts": counts,
        **(info or {}),
    }
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return out_dir
