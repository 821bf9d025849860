import pytest
import torch

from presso.compression.engines.pruning.masks import (
    check_nm,
    global_threshold,
    is_nm,
    layer_mask,
    nm_mask,
    row_mask,
    threshold_mask,
)
from presso.compression.engines.pruning.owl import allocate, outlier_ratio
from presso.compression.errors import InvalidRecipe


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_exactly_n_of_every_m(n, m):
    scores = torch.rand(37, 64 * m // 4 * 4)
    keep = nm_mask(scores, n, m)
    per_group = keep.reshape(37, -1, m).sum(dim=2)
    assert bool((per_group == n).all())
    # the kept ones are the largest of their group
    groups = scores.reshape(37, -1, m)
    kept_min = torch.where(keep.reshape(37, -1, m), groups, torch.inf).amin(dim=2)
    dropped_max = torch.where(keep.reshape(37, -1, m), -torch.inf, groups).amax(dim=2)
    assert bool((kept_min >= dropped_max).all())
    assert is_nm(scores * keep, n, m)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_row_and_layer_masks_hit_the_target(sparsity):
    scores = torch.rand(64, 320)
    rows = row_mask(scores, sparsity)
    assert abs((~rows).float().mean().item() - sparsity) < 1e-3
    per_row = (~rows).sum(dim=1)
    assert int(per_row.max() - per_row.min()) == 0  # Wanda's per-output comparison group
    layer = layer_mask(scores, sparsity)
    assert abs((~layer).float().mean().item() - sparsity) < 1e-3


def test_global_threshold_hits_the_target_over_all_layers():
    layers = [torch.rand(50, 80) * 3, torch.rand(120, 40), torch.rand(10, 10) * 0.1]
    thr = global_threshold(layers, 0.6)
    pruned = sum(int((~threshold_mask(s, thr)).sum()) for s in layers)
    total = sum(s.numel() for s in layers)
    assert abs(pruned / total - 0.6) < 1e-3
    # a global threshold prunes the small-valued layer almost entirely
    assert (~threshold_mask(layers[2], thr)).float().mean() > 0.99


def test_nm_needs_m_to_divide_the_width():
    with pytest.raises(InvalidRecipe, match="multiple of M"):
        check_nm(30, 4, "x")


def test_owl_allocation_keeps_the_mean_and_bounds():
    ratios = [0.01, 0.05, 0.02, 0.09, 0.03]
    s = allocate(ratios, [100] * 5, 0.5, 0.08)
    assert abs(sum(s) / 5 - 0.5) < 1e-9
    assert max(s) - min(s) == pytest.approx(0.16)
    assert s[3] == min(s)  # most outliers -> least pruned
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 100.0])], 2.0) == 0.25
