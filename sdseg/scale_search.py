"""Scale search on the clicked slice: which crop scale shows the clicked lesion as the model can segment it.

The clicked slice is sampled at every scale of :data:`DEFAULT_SCALES` (crops of scale x the model's
``in_plane_voxels``, in one batched forward pass); each scale's samples keep the component under the click
(sdseg.propagation). A scale is scored by

    presence  = fraction of the samples with a component under the click,
    agreement = mean Dice over the pairs of those non-empty samples (1 for a single one),
    score     = presence x agreement,

and the rule (:func:`choose_scale`, parameters :class:`ScaleRule`) is:

1. found: presence >= ``min_presence`` and score >= ``min_score``;
2. eligible: found, the consensus does not touch an edge of the crop that has more volume (ROI) beyond it (a lesion
   cut by its crop: the model never saw one), and fill <= ``max_fill`` (fill = the consensus' largest extent / the
   crop's side on that axis: a model painting most of its crop is not outlining a lesion);
3. among the eligible scales the highest score; scores within ``score_tolerance`` of it count as equal, and of those
   the scale whose fill is closest to ``target_fill`` (compared as |log(fill / target_fill)|) wins;
4. no eligible scale, but some found one touches its crop's edge: the largest such scale (the propagation then cuts
   that slice again larger until the lesion fits);
5. otherwise the recipe's scale (1), whose result is delivered as the model gives it (often empty).

The rule's parameters are config values: a model's ``config["propagation"]["scale_rule"]`` overrides the defaults
(``scripts/tune_scale_rule.py`` picks them on validation volumes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from sdseg.metrics import dice
from sdseg.rule_config import rule_of_config

DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)  # x the model's in_plane_voxels


@dataclass(frozen=True)
class ScaleRule:
    """Parameters of :func:`choose_scale` (see the module docstring)."""
    CONFIG_KEY: ClassVar[str] = "scale_rule"  # its key in a model's config["propagation"]

    # scripts/tune_scale_rule.py (sdseg-small, 8 samples, healthy weight 2) on the validation split of the sarcoma
    # set (`sdseg preprocess --source ibsi-sts --modality all --export-volumes DIR --export-split val`: STS_004, 007,
    # 013, 022, 023, 034, 036, 039 on CT and MR; their PETs are narrower than every crop): max_fill 0.45 and
    # min_score 0 make the best objective (clicked-slice Dice 0.125, always 1x: 0.033; healthy clicks left empty
    # 100 %); the other parameters tie there and keep middle values (target_fill: sdseg-small's training lesions fill
    # about a third of their crops). A model's own config may hold its own (config["propagation"]["scale_rule"]).
    min_presence: float = 0.5
    target_fill: float = 0.35
    score_tolerance: float = 0.05
    min_score: float = 0.0
    max_fill: float = 0.45

    @classmethod
    def of_config(cls, config: dict) -> "ScaleRule":
        """The defaults, overridden by the model's ``config["propagation"]["scale_rule"]`` (sdseg.rule_config)."""
        return rule_of_config(cls, config, cls.CONFIG_KEY)


@dataclass(frozen=True)
class ScaleCandidate:
    """What one scale's samples of the clicked slice show (module docstring); ``touches_border``: their consensus
    touches an edge of the crop with more volume (ROI) beyond it; ``fill``: 0 for an empty consensus."""
    scale: float
    presence: float
    agreement: float
    touches_border: bool
    fill: float

    @property
    def score(self) -> float:
        return self.presence * self.agreement

    def as_dict(self) -> dict:
        return {**{key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()},
                "score": round(self.score, 4)}


def candidate(scale: float, picked: np.ndarray, consensus: np.ndarray, touches_border: bool) -> ScaleCandidate:
    """The :class:`ScaleCandidate` of one scale's kept components ``picked`` (N, A, B) bool and their consensus
    (A, B) (the crop's pixels)."""
    present = [mask for mask in picked if mask.any()]
    pairs = [dice(a, b) for n, a in enumerate(present) for b in present[n + 1:]]
    agreement = float(np.mean(pairs)) if pairs else (1.0 if present else 0.0)
    fill = 0.0
    if consensus.any():
        rows, columns = np.nonzero(consensus)
        fill = max((rows.max() - rows.min() + 1) / consensus.shape[0],
                   (columns.max() - columns.min() + 1) / consensus.shape[1])
    return ScaleCandidate(float(scale), len(present) / max(1, len(picked)), agreement, bool(touches_border),
                          float(fill))


def choose_scale(candidates: list[ScaleCandidate], rule: ScaleRule) -> int | None:
    """Index of the scale the rule picks (module docstring), or None when no scale shows the lesion."""
    present = [n for n, c in enumerate(candidates)
               if c.presence >= rule.min_presence and c.score >= rule.min_score and c.fill > 0]
    eligible = [n for n in present if not candidates[n].touches_border and candidates[n].fill <= rule.max_fill]
    if not eligible:
        touching = [n for n in present if candidates[n].touches_border]
        return max(touching, key=lambda n: candidates[n].scale) if touching else None
    best = max(candidates[n].score for n in eligible)
    tied = [n for n in eligible if candidates[n].score >= best - rule.score_tolerance]
    return min(tied, key=lambda n: abs(math.log(candidates[n].fill / rule.target_fill)))


def scale_for_extent(extent: float, scales, in_plane_voxels: int, fill: float) -> float | None:
    """Of ``scales``, the one whose crop (scale x ``in_plane_voxels``) a lesion of ``extent`` voxels fills closest
    to ``fill`` (in log ratio): the propagation re-scales with the lesion so that it keeps the chosen scale's fill;
    None for an empty lesion."""
    if extent <= 0 or fill <= 0:
        return None
    return min(scales, key=lambda s: abs(math.log(extent / (s * in_plane_voxels) / fill)))
