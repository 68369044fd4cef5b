"""The multiresolution grid: `coarsen` merges the far part of the horizon into blocks, keeping the
hard limits conservative so that a plan that holds for a block holds in every interval it covers.
Split from `optimize.problem` (issue 11), which re-exports `coarsen`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hashflex.optimize.problem import Problem


def coarsen(problem: Problem, fine_intervals: int, block_h: float = 1.0) -> tuple[Problem, np.ndarray]:
    """Merge intervals after the first ``fine_intervals`` into blocks of ``block_h`` hours.

    Returns the coarse problem and ``block_of`` ([T_fine] -> coarse index) to expand a schedule
    back. Prices, intensity and hashprice are duration-weighted means; limits, caps, renewable
    output and availability take the block minimum, so the coarse plan is safe in every interval.
    """
    from hashflex.optimize.compute_problem import coarsen_compute

    T = problem.T
    per_block = max(int(round(block_h / problem.base_interval_h)), 1)
    block_of = np.empty(T, dtype=int)
    block_of[:fine_intervals] = np.arange(min(fine_intervals, T))
    if T > fine_intervals:
        block_of[fine_intervals:] = fine_intervals + (np.arange(T - fine_intervals) // per_block)
    n_blocks = int(block_of[-1]) + 1 if T else 0
    if n_blocks == T:
        return problem, block_of

    def weighted_mean(values: np.ndarray) -> np.ndarray:
        sums = np.bincount(block_of, weights=values * problem.duration_h, minlength=n_blocks)
        return sums / np.bincount(block_of, weights=problem.duration_h, minlength=n_blocks)

    def block_min(values: np.ndarray) -> np.ndarray:
        out = np.full(n_blocks, np.inf)
        np.minimum.at(out, block_of, values)
        return out

    first = np.array([np.flatnonzero(block_of == b)[0] for b in range(n_blocks)])
    limit = block_min(problem.import_limit_kw)
    sources = []
    for b in range(n_blocks):
        members = np.flatnonzero(block_of == b)
        sources.append(problem.import_limit_source[members[np.argmin(problem.import_limit_kw[members])]])
    coarse = dataclasses.replace(
        problem,
        interval_start=problem.interval_start[first],
        duration_h=np.bincount(block_of, weights=problem.duration_h, minlength=n_blocks),
        price_usd_mwh=weighted_mean(problem.price_usd_mwh),
        hashprice_usd_per_ph_day=weighted_mean(problem.hashprice_usd_per_ph_day),
        renewable_kw=block_min(problem.renewable_kw),
        import_limit_kw=limit,
        import_limit_source=tuple(sources),
        intensity_kg_per_mwh=weighted_mean(problem.intensity_kg_per_mwh),
        groups=tuple(dataclasses.replace(g, units_available=block_min(g.units_available).astype(int))
                     for g in problem.groups),
        receptors=tuple(dataclasses.replace(r, cap_dba=block_min(r.cap_dba)) for r in problem.receptors),
        carbon_budgets=tuple(
            dataclasses.replace(c, mask=np.bincount(block_of, weights=c.mask.astype(float),
                                                    minlength=n_blocks) > 0)
            for c in problem.carbon_budgets
        ),
        # Reserve held through a block: the least cap, the largest obligation (conservative both ways).
        reserves=tuple(dataclasses.replace(r, price_usd_mw_h=weighted_mean(r.price_usd_mw_h),
                                           max_kw=block_min(r.max_kw), obligation_kw=-block_min(-r.obligation_kw))
                       for r in problem.reserves),
        compute=None if problem.compute is None else coarsen_compute(problem.compute, block_of, problem.duration_h),
        # Derated units through a block: the most of any interval in it (conservative).
        derates=tuple(dataclasses.replace(d, units=-block_min(-d.units).astype(int)) for d in problem.derates),
    )
    return coarse, block_of
