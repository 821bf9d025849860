"""Compress to a target (issue 23): per-layer allocation search under a budget and a quality floor.

``spec`` (torch-free) is the ``target`` of a job request; the rest runs on the worker:
``measure`` (per-layer candidate weights and sensitivities, block-wise, layer-sequential), ``knapsack``
and ``evolve`` (pure search over per-layer levels), ``fitness`` (KL on calibration tokens with swapped
weights), ``allocation`` (an allocation <-> a normal recipe with per-layer overrides) and ``job`` (the
orchestration ``run_local`` calls). This package's ``__init__`` imports nothing, so the API may import
``presso.compression.search.spec`` without torch.
"""
