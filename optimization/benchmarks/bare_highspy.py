"""The schedule MILP of `hashflex.optimize.milp`, built directly in highspy from numpy arrays.

This is the yardstick for Pyomo's overhead in `solve_scaling.py`: the same columns, rows and
objective as `milp.build_model` (see optimization/FORMULATION.md). The numpy build itself now lives
in the package, `hashflex.optimize.fast_build.compile_fast`, which `solve()` uses for every problem
of the core families (tests/test_optimize_fast_build.py checks it against the Pyomo compile entry by
entry); this module keeps the benchmarks' names for it. It is solved with the very same procedure
(`solve_lp_round_mip`: LP relaxation → rounding → proof by the LP bound or warm-started MIP), so
only the build differs. `tests/test_bare_highspy_equivalence.py` checks that both builds give the
same LP optimum and the same MIP objective within the gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hashflex.optimize.fast_build import compile_fast
from hashflex.optimize.problem import Problem
from hashflex.optimize.solve import DEFAULT_REL_GAP, CompiledModel, RunOutcome, solve_lp_round_mip


@dataclass
class BareModel:
    """The bare highspy model: the HiGHS instance, its columns' bounds and the count columns."""
    compiled: CompiledModel
    n_cols: int
    n_rows: int
    nnz: int


def build_bare(problem: Problem) -> BareModel:
    """The MILP's LP relaxation as a highspy model (`fast_build.compile_fast`); count columns are
    made integer by the solve. Sizes count the deferred rows too."""
    compiled = compile_fast(problem)
    late = compiled.deferred
    n_late, nnz_late = (len(late.lower), len(late.index)) if late is not None else (0, 0)
    return BareModel(compiled, compiled.highs.getNumCol(), compiled.highs.getNumRow() + n_late,
                     compiled.highs.getNumNz() + nnz_late)


@dataclass(frozen=True)
class BareResult:
    """A bare build and solve: the outcome and the build / solve times (s)."""
    outcome: RunOutcome
    build_seconds: float
    solve_seconds: float
    counts: dict[tuple[int, int], np.ndarray]


def solve_bare(problem: Problem, *, time_limit_s: float = 10.0, rel_gap: float = DEFAULT_REL_GAP) -> BareResult:
    """Build in bare highspy and solve with the same LP → rounding → MIP procedure as `milp.solve`."""
    started = time.perf_counter()
    bare = build_bare(problem)
    built = time.perf_counter()
    outcome = solve_lp_round_mip(bare.compiled, problem, time_limit_s=time_limit_s, rel_gap=rel_gap)
    solved = time.perf_counter()
    counts = {}
    if outcome.x is not None:
        counts = {key: np.rint(outcome.x[cols]).astype(int) for key, cols in bare.compiled.count_columns.items()}
    return BareResult(outcome, built - started, solved - built, counts)
