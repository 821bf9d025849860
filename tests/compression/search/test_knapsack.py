"""The pure parts of the search: the knapsack is optimal (brute force on hand-made tables), its front is the
Pareto front, mutations keep the budget, evolution never loses its best, allocations round-trip as recipes."""

from __future__ import annotations

import itertools
import random

import pytest

from presso.compression.search import evolve, knapsack
from presso.compression.search.allocation import Level, allocation_recipe, recipe_levels, space_levels

# 4 layers x 3 levels: (cost, error); dearer levels have lower error, not convex on purpose
COSTS = [[2, 3, 8], [2, 3, 8], [4, 6, 16], [1, 2, 4]]
ERRORS = [[9.0, 4.0, 0.1], [1.0, 0.6, 0.0], [30.0, 5.0, 0.2], [7.0, 6.5, 0.5]]


def _brute(costs: list[list[int]], errors: list[list[float]], budget: int) -> float:
    best = float("inf")
    for combo in itertools.product(*(range(len(c)) for c in costs)):
        if sum(costs[i][j] for i, j in enumerate(combo)) <= budget:
            best = min(best, sum(errors[i][j] for i, j in enumerate(combo)))
    return best


@pytest.mark.parametrize("budget", range(9, 37))
def test_knapsack_is_optimal_on_a_hand_made_table(budget: int) -> None:
    levels = knapsack.solve(COSTS, ERRORS, budget)
    assert sum(COSTS[i][j] for i, j in enumerate(levels)) <= budget
    assert sum(ERRORS[i][j] for i, j in enumerate(levels)) == pytest.approx(_brute(COSTS, ERRORS, budget))


def test_a_hand_checked_case() -> None:
    # budget 14: layer 2 leaves its cheapest level (error 30 -> 5 for 2 more); the last 2 go to layer 3 (7 -> 0.5),
    # not to layer 0 (9 -> 4 for 1, then nothing fits for layer 3): 2+2+6+4 = 14, error 9+1+5+0.5 = 15.5
    assert knapsack.solve(COSTS, ERRORS, 14) == [0, 0, 1, 2]
    assert _brute(COSTS, ERRORS, 14) == pytest.approx(15.5)


def test_knapsack_on_random_tables_and_coarse_units() -> None:
    rng = random.Random(0)
    for _ in range(30):
        n, m = rng.randint(1, 5), rng.randint(1, 4)
        costs = [[rng.randint(1, 50) for _ in range(m)] for _ in range(n)]
        errors = [[rng.random() for _ in range(m)] for _ in range(n)]
        budget = rng.randint(sum(min(c) for c in costs), sum(max(c) for c in costs))
        exact = knapsack.solve(costs, errors, budget)
        assert sum(errors[i][j] for i, j in enumerate(exact)) == pytest.approx(_brute(costs, errors, budget))
        coarse = knapsack.solve(costs, errors, budget, resolution=7)  # costs rounded up: never over the budget
        assert sum(costs[i][j] for i, j in enumerate(coarse)) <= budget


def test_infeasible_budget() -> None:
    with pytest.raises(knapsack.Infeasible):
        knapsack.solve(COSTS, ERRORS, 8)


def test_front_is_the_pareto_front() -> None:
    points = knapsack.front(COSTS, ERRORS, points=40)
    costs = [p[0] for p in points]
    assert costs == sorted(costs) and costs[0] == 9 and costs[-1] == 36
    for cost, err, levels in points:
        assert sum(COSTS[i][j] for i, j in enumerate(levels)) == cost
        assert sum(ERRORS[i][j] for i, j in enumerate(levels)) == pytest.approx(err)
        assert err == pytest.approx(_brute(COSTS, ERRORS, cost))  # least error at its cost
    errs = [p[1] for p in points]
    assert errs == sorted(errs, reverse=True)


def test_mutations_stay_within_the_budget() -> None:
    rng = random.Random(1)
    parent = tuple(knapsack.solve(COSTS, ERRORS, 20))
    for _ in range(500):
        child = evolve.mutate(parent, COSTS, 20, rng)
        assert evolve.cost_of(child, COSTS) <= 20


def test_evolution_improves_on_a_poor_start_and_never_loses_its_best() -> None:
    def fitness(a: tuple[int, ...]) -> float:  # non-additive on purpose
        e = sum(ERRORS[i][j] for i, j in enumerate(a))
        return e + (3.0 if a[0] == a[2] else 0.0)

    start = (0, 0, 0, 0)
    ev = evolve.evolve(start, COSTS, 20, fitness, generations=60, offspring=6, seed=3)
    assert ev.best_fitness <= fitness(start)
    assert ev.best_fitness == min(ev.scored.values())
    assert evolve.cost_of(ev.best, COSTS) <= 20
    best_possible = min(fitness(a) for a in itertools.product(range(3), repeat=4) if evolve.cost_of(a, COSTS) <= 20)
    assert ev.best_fitness == pytest.approx(best_possible)
    assert [f for _, f in ev.top(3)] == sorted(ev.scored.values())[:3]


def test_an_allocation_is_a_recipe_with_overrides_and_back() -> None:
    names = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    levels = [Level("gptq", 4, 64), Level("gptq", 4, 64), Level("gptq", 3, 64), Level("gptq", 4, 64),
              Level("gptq", 8, 128), Level("gptq", 4, 64)]
    assigned = dict(zip(names, levels, strict=True))
    recipe = allocation_recipe(assigned, {"gptq": {"damp_percent": 0.05}}, ["*"], ["lm_head"])
    (step,) = recipe.steps
    assert (step.method, step.bits, step.group_size, step.damp_percent) == ("gptq", 4, 64, 0.05)
    assert [(o.pattern, o.bits, o.group_size) for o in step.overrides] == [
        ("model.layers.0.mlp.down_proj", 3, None), ("model.layers.1.mlp.up_proj", 8, 128)]
    assert recipe_levels(recipe, names) == assigned
    mixed = dict(assigned, **{names[0]: Level("rtn", 8, 64)})
    two = allocation_recipe(mixed, {}, ["*"], ["lm_head"])
    assert [s.method for s in two.steps] == ["rtn", "gptq"]
    assert recipe_levels(two, names) == mixed


def test_space_levels_add_the_seed_and_clamp_wide_groups() -> None:
    levels = space_levels(["gptq"], [3, 4], [64], seed=Level("gptq", 5, 32))
    assert levels == [Level("gptq", 3, 64), Level("gptq", 4, 64), Level("gptq", 5, 32)]
    assert Level("gptq", 4, 128).for_layer(96) == Level("gptq", 4, -1)
