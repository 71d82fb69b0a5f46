"""Training batches from crops held in memory: the split is read once (on the training device when it fits), and
each batch is gathered, given one rater's mask per image, augmented (sdseg.data.augment) and given its prompt
channels there, without a file read per item.

Every random draw of a batch (which rater, which augmentations, which prompts) comes from the CPU generator the
caller passes, so a step's batch depends only on that generator's seed, not on the device or on earlier steps
(resumable training).
"""

from __future__ import annotations

import numpy as np
import torch

from sdseg.data.augment import DEFAULT_AUGMENTATIONS, augment_batch
from sdseg.data.dataset import CropsDataset
from sdseg.device import free_memory_bytes
from sdseg.masks import rater_target
from sdseg.prompt_maps import prompt_maps, training_prompts

MEMORY_FRACTION = 0.25  # the crops go to the device when they take at most this share of its free memory


class InMemoryCrops:
    """``images`` (N, C, S, S) float32 in [-1, 1], ``masks`` (N, R, S, S) bool and ``neighbours`` (N, 2, S, S) bool
    (the raters' union on the slices before and after; ``has_neighbours`` (N,): which crop files hold them) of a
    crops data set split, with ``rater_counts`` (N,) (items with fewer raters than R are padded with empty masks
    that are never drawn)."""

    def __init__(self, dataset: CropsDataset, device: torch.device):
        items = [dataset.read(i) for i in range(len(dataset))]
        counts = [item["masks"].shape[0] for item in items]
        masks = np.zeros((len(items), max(counts), *items[0]["masks"].shape[1:]), dtype=bool)
        for index, item in enumerate(items):
            masks[index, :counts[index]] = item["masks"] > 0
        images = np.stack([item["image"] for item in items])
        neighbours = np.stack([item["neighbours"] > 0 for item in items])
        self.has_neighbours = torch.tensor([item["has_neighbours"] for item in items])
        fits = images.nbytes + masks.nbytes + neighbours.nbytes <= MEMORY_FRACTION * free_memory_bytes(device)
        self.storage = device if fits else torch.device("cpu")
        self.device = device
        self.images = torch.from_numpy(images).to(self.storage)
        self.masks = torch.from_numpy(masks).to(self.storage)
        self.neighbours = torch.from_numpy(neighbours).to(self.storage)
        self.rater_counts = torch.tensor(counts)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: list[int], generator: torch.Generator, augmentations=DEFAULT_AUGMENTATIONS,
              prompt_channels=(), target: str = "random"):
        """``(images (B, C + P, S, S), mask (B, 1, S, S) float32 in {0, 1})`` on the device: item ``indices``, one
        uniformly random rater's mask each (or the raters' majority or union: ``target``,
        sdseg.masks.rater_target), the ``augmentations`` (sdseg.data.augment.augment_batch: the same
        geometric change of an image, its masks and neighbours), and the P ``prompt_channels`` drawn from the
        augmented masks and neighbours (sdseg.prompt_maps.training_prompts; a crop clicked off its object gets an empty
        mask)."""
        chosen = torch.tensor(indices)
        raters = (torch.rand(len(indices), generator=generator) * self.rater_counts[chosen]).long()
        index = chosen.to(self.storage)
        images = self.images[index].to(self.device, non_blocking=True)
        every_rater = self.masks[index].to(self.device, non_blocking=True)
        neighbours = self.neighbours[index].to(self.device, non_blocking=True)
        images, (every_rater, neighbours) = augment_batch(images, [every_rater, neighbours], generator, augmentations)
        mask = rater_target(every_rater, self.rater_counts[chosen], target, raters)[:, None].float()
        if prompt_channels:
            prompts = training_prompts(every_rater, generator, neighbours, "previous" in prompt_channels,
                                       self.has_neighbours[chosen])
            images = torch.cat([images, prompt_maps(prompts.points, prompts.boxes, images.shape[-1], prompt_channels,
                                                    prompts.previous)], dim=1)
            mask = torch.where(prompts.off_object.to(mask.device)[:, None, None, None], 0.0, mask)
        return images, mask
