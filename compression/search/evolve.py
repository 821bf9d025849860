"""A short (1 + lambda) evolutionary search over per-layer levels under a cost budget (after EvoPress).

The parent starts at the knapsack's allocation. Each generation makes ``offspring`` mutants: a few layers get
another level at random, then the mutant is repaired to the budget (random layers step down to their next
cheaper level until it fits) and, where room is left, a few random layers step up. Mutants are scored by the
fitness (lower is better: KL on calibration tokens); the best mutant replaces the parent when it is no worse.
Every scored allocation is kept (``Evolution.scored``), so the best few and the (cost, fitness) points explored
come out of one run. Pure: the fitness is a callable, randomness a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Allocation = tuple[int, ...]


@dataclass
class Evolution:
    best: Allocation
    best_fitness: float
    scored: dict[Allocation, float] = field(default_factory=dict)  # every allocation evaluated -> fitness

    def top(self, k: int) -> list[tuple[Allocation, float]]:
        return sorted(self.scored.items(), key=lambda kv: kv[1])[:k]


def cost_of(alloc: Sequence[int], costs: Sequence[Sequence[int]]) -> int:
    return sum(int(costs[i][j]) for i, j in enumerate(alloc))


def _orders(costs: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per layer, its level indices by ascending cost."""
    return [sorted(range(len(c)), key=lambda j: (c[j], j)) for c in costs]


def _step(order: list[int], level: int, up: bool, costs: Sequence[int]) -> int | None:
    """The next strictly dearer (up) or cheaper level of a layer, or None."""
    pos = order.index(level)
    rng = range(pos + 1, len(order)) if up else range(pos - 1, -1, -1)
    for p in rng:
        cand = order[p]
        if (costs[cand] > costs[level]) if up else (costs[cand] < costs[level]):
            return cand
    return None


def mutate(parent: Allocation, costs: Sequence[Sequence[int]], budget: int, rng: random.Random,
           orders: list[list[int]] | None = None, changes: int = 2) -> Allocation:
    """A mutant of ``parent`` within ``budget`` (the parent must be within it)."""
    orders = orders or _orders(costs)
    child = list(parent)
    n = len(child)
    for i in rng.sample(range(n), min(n, rng.randint(1, changes))):
        if len(costs[i]) > 1:
            child[i] = rng.choice([j for j in range(len(costs[i])) if j != child[i]])
    total = cost_of(child, costs)
    idx = list(range(n))
    while total > budget:  # repair: random layers step down
        rng.shuffle(idx)
        moved = False
        for i in idx:
            down = _step(orders[i], child[i], False, costs[i])
            if down is not None:
                total += costs[i][down] - costs[i][child[i]]
                child[i] = down
                moved = True
                break
        if not moved:  # everything at its cheapest: cannot happen when the parent fits
            return parent
    for i in rng.sample(range(n), min(n, changes)):  # use room that is left
        up = _step(orders[i], child[i], True, costs[i])
        if up is not None and total + costs[i][up] - costs[i][child[i]] <= budget:
            total += costs[i][up] - costs[i][child[i]]
            child[i] = up
    return tuple(child)


def evolve(start: Sequence[int], costs: Sequence[Sequence[int]], budget: int,
           fitness: Callable[[Allocation], float], *, generations: int, offspring: int, seed: int = 0,
           on_generation: Callable[[int, Evolution], None] | None = None,
           extra_starts: Sequence[Sequence[int]] = ()) -> Evolution:
    """Evolve from ``start`` (within ``budget``); ``extra_starts`` (e.g. a seed recipe's uniform allocation)
    are scored too and may become the parent."""
    rng = random.Random(seed)
    orders = _orders(costs)
    scored: dict[Allocation, float] = {}

    def score(a: Allocation) -> float:
        if a not in scored:
            scored[a] = float(fitness(a))
        return scored[a]

    parent = tuple(start)
    if cost_of(parent, costs) > budget:
        raise ValueError("the starting allocation is over the budget")
    best_fit = score(parent)
    for other in extra_starts:
        o = tuple(other)
        if cost_of(o, costs) <= budget and score(o) < best_fit:
            parent, best_fit = o, scored[o]
    ev = Evolution(best=parent, best_fitness=best_fit, scored=scored)
    for g in range(generations):
        kids = [k for k in dict.fromkeys(mutate(parent, costs, budget, rng, orders) for _ in range(offspring))
                if k != parent]
        if kids:
            kid = min(kids, key=score)
            if scored[kid] <= best_fit:
                parent, best_fit = kid, scored[kid]
        ev.best, ev.best_fitness = parent, best_fit
        if on_generation is not None:
            on_generation(g + 1, ev)
    return ev
