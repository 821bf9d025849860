"""Multiple-choice knapsack over per-layer levels: one level per layer, least total error under a cost budget.

Exact dynamic programming over integer costs (stored bits are integers). Costs above each layer's cheapest
level are counted in units of ``unit`` (1 when the spare capacity fits ``resolution`` cells; otherwise the
capacity / resolution, each cost rounded *up*, so a solution never exceeds the budget). Pure numpy.

``front`` reads the same table at every capacity: the least predicted error for each budget, i.e. the
Pareto front of (cost, error) over all allocations, without solving again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESOLUTION = 1 << 14


class Infeasible(ValueError):
    """Even the cheapest level of every layer costs more than the budget."""


@dataclass
class _Table:
    base: int  # sum of each layer's cheapest cost
    unit: int
    best: np.ndarray  # [cells + 1] least error using at most c units of the spare capacity
    choice: np.ndarray  # [layers, cells + 1] level chosen for layer i at capacity c (int16)
    extra: list[np.ndarray]  # per layer: units of each level above the layer's cheapest


def _solve(costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], spare: int, resolution: int) -> _Table:
    if len(costs) != len(errors) or any(len(c) != len(e) or not c for c, e in zip(costs, errors, strict=True)):
        raise ValueError("costs and errors must have the same, non-empty, rows")
    base = sum(min(c) for c in costs)
    unit = 1 if spare <= resolution else math.ceil(spare / resolution)
    cells = spare // unit
    extra = [np.array([math.ceil((int(v) - min(c)) / unit) for v in c], dtype=np.int64) for c in costs]
    inf = np.inf
    best = np.zeros(cells + 1)  # nothing placed yet: zero error at every capacity
    choice = np.zeros((len(costs), cells + 1), dtype=np.int16)
    for i, (units, err) in enumerate(zip(extra, errors, strict=True)):
        new = np.full(cells + 1, inf)
        pick = np.zeros(cells + 1, dtype=np.int16)
        for j, (u, e) in enumerate(zip(units, err, strict=True)):
            if u > cells:
                continue
            cand = np.full(cells + 1, inf)
            cand[u:] = best[: cells + 1 - u] + float(e)
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        best, choice[i] = new, pick
    return _Table(base=base, unit=unit, best=best, choice=choice, extra=extra)


def _backtrack(t: _Table, cell: int) -> list[int]:
    out = [0] * len(t.extra)
    for i in range(len(t.extra) - 1, -1, -1):
        j = int(t.choice[i, cell])
        out[i] = j
        cell -= int(t.extra[i][j])
    return out


def solve(costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], budget: int,
          resolution: int = DEFAULT_RESOLUTION) -> list[int]:
    """The level index of each layer minimizing the summed error with summed cost <= ``budget``."""
    base = sum(min(c) for c in costs)
    if base > budget:
        raise Infeasible(f"the cheapest allocation costs {base}, above the budget {budget}")
    t = _solve(costs, errors, int(budget) - base, resolution)
    return _backtrack(t, int(np.argmin(t.best)))


def front(costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], points: int = 16,
          resolution: int = DEFAULT_RESOLUTION) -> list[tuple[int, float, list[int]]]:
    """Up to ``points`` allocations on the Pareto front, evenly spread in cost from the cheapest to the dearest:
    ``(cost, predicted error, levels)``, cost ascending, each the least error at its cost."""
    base = sum(min(c) for c in costs)
    top = sum(max(c) for c in costs)
    t = _solve(costs, errors, top - base, resolution)
    running = np.minimum.accumulate(t.best)  # least error at *most* c
    cells = len(running) - 1
    out: list[tuple[int, float, list[int]]] = []
    seen: set[tuple[int, ...]] = set()
    for k in range(points):
        cap = round(cells * k / max(points - 1, 1))
        cell = int(np.argmin(t.best[: cap + 1]))  # the cheapest cell reaching the least error at this cap
        levels = _backtrack(t, cell)
        if tuple(levels) in seen:
            continue
        seen.add(tuple(levels))
        cost = sum(int(c[j]) for c, j in zip(costs, levels, strict=True))
        out.append((cost, float(running[cap]), levels))
    return sorted(out, key=lambda p: p[0])
