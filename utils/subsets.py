"""Labelled subsets for the semi-supervised regimes of the SSL papers (1% and 10% of the labels).

SimCLR and BYOL fine-tune on "1% or 10% of the labelled training set, sampled in a class-balanced
way": the same number of images from every class, drawn at random but fixed by a seed so that
every method is evaluated on the very same images.
"""

import torch


def class_balanced_fraction(targets: list[int], fraction: float, seed: int) -> list[int]:
    """Sorted indices of about `fraction` of the items, the same number from every class.

    The total is round(fraction x N), at least one per class, split evenly over the classes (the
    remainder goes to the first classes in label order); a class smaller than its share gives all
    it has. The choice depends only on (targets, fraction, seed).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(targets, dtype=torch.long)
    if fraction == 1:
        return list(range(len(labels)))
    classes = labels.unique().tolist()  # sorted
    total = max(round(fraction * len(labels)), len(classes))
    per_class, extra = divmod(total, len(classes))
    generator = torch.Generator().manual_seed(seed)
    indices: list[int] = []
    for rank, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        take = min(per_class + (1 if rank < extra else 0), len(members))
        order = torch.randperm(len(members), generator=generator)[:take]
        indices.extend(members[order].tolist())
    return sorted(indices)
