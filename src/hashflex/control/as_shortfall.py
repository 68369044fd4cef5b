"""The shortfall of AS deployments over one interval: the one rule the evidence report
(:mod:`hashflex.report.ancillary`) and the ``mpc+as`` backtest's settlement
(:func:`hashflex.backtest.ancillary_loop.settle_reserve`) measure with (issue 15). Pure: no I/O, no clock.

It lives here, below both, because ``report`` and ``backtest`` are rooms of one floor that may not
import each other (``[tool.importlinter]``), and next to the limits book, whose
``LimitsBook.deployment_limit_kw`` gives each deployment's limit: its baseline less its MW
(measured from the pre-deployment load only; no award raises it), stacked on the deployments in force
at its arrival, less the MW of the others in force (``control.ancillary.stacked_limit_kw``; issue 15). The
backtest reads it from the loop's book; the report runs the same method on the book rebuilt from
the trail (:func:`hashflex.report.deployment_limit.book_limit_kw`).

The rule, per interval (interval means, kW)::

    binding limit   L = min_i limit_i          over the deployments that bind the interval
    obligation cap  D = Σ_i deployed_i         over the same deployments
    shortfall       S = min(max(import − L, 0), D)
    deployment i's share  S_i = S · deployed_i / D

- **Which deployments bind an interval**: those in force at its start whose deadline has passed by
  then (the product's deployment time is the site's to respond in: ERCOT Nodal Protocols
  §6.5.7.6.2.2–§6.5.7.6.2.4, ``profile.AS_PRODUCT_RULES``), each with the revision of it that binds
  (:func:`binding_revision`). The caller selects them; these functions take their limits and MW.
- **Concurrent deployments: the lowest limit binds.** Each deployment is a hard import limit; the
  site obeys them all only at or below the lowest (the limits book and the guard take the minimum
  too). Measuring each deployment against its own, higher limit would call a site compliant that is
  over the limit it was held to.
- **Capped at the MW deployed: yes.** A deployment obliges the site to shed its deployed MW from
  the load at the instruction; it can fail by at most all of them (delivered 0). Import above that
  load (load added after the instruction) is not a larger failure of the deployment: the report
  shows it in the metered import and a negative metered delivery, and the guard holds the limit
  regardless.
- **Float noise is not a shortfall**: an excess of at most ``FLOAT_NOISE_KW`` (1 mW) is counted 0.
  The backtest's import is a sum over thousands of units less the solar used, and the limit a
  difference of such sums, so a site exactly at its limit can read 2e-9 kW over (2024-05-08, once
  the limit stopped moving with awards); no meter resolves a milliwatt. With concurrent deployments
  the cap is the sum of their MW: the reduction all of them asked together.
- **Attribution**: a concurrent interval's shortfall is shared pro rata to the deployed MW, so the
  deployments' shares add up to the site's shortfall (nothing counted twice) and the backtest's
  delivered-energy split uses the same shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

FLOAT_NOISE_KW = 1e-6
"""An excess over the binding limit this small, kW, is arithmetic, not load (module docstring)."""

__all__ = ["FLOAT_NOISE_KW", "binding_deployments", "binding_revision", "deployment_shortfall_kw", "shortfall_shares"]


def binding_deployments(limits_kw: Sequence[float], deployed_kw: Sequence[float]) -> tuple[float, float]:
    """The binding limit and the obligation cap of the deployments that bind one interval.

    Parameters
    ----------
    limits_kw : sequence of float
        [D] each binding deployment's import limit over the interval, kW (``LimitsBook.deployment_limit_kw``).
    deployed_kw : sequence of float
        [D] each one's deployed MW, kW (same order).

    Returns
    -------
    tuple of (float, float)
        (the lowest limit, kW; ``inf`` when none binds) and (Σ deployed, kW; 0 when none).

    Raises
    ------
    ValueError
        ``limits_kw`` and ``deployed_kw`` differ in length.
    """
    if len(limits_kw) != len(deployed_kw):
        raise ValueError(f"deployed_kw: {len(deployed_kw)} values for {len(limits_kw)} limits_kw")
    if not len(limits_kw):
        return float("inf"), 0.0
    return float(min(limits_kw)), float(sum(deployed_kw))


def deployment_shortfall_kw(import_kw: Any, binding_limit_kw: Any, deployed_kw: Any) -> Any:
    """The site's deployment shortfall over an interval (module docstring): min(max(import − L, 0), D).

    Parameters
    ----------
    import_kw : float or array
        [T] the interval's mean grid import, kW (metered in the report; from the counts in the backtest).
    binding_limit_kw : float or array
        [T] the lowest limit of the deployments that bind, kW (``inf`` where none).
    deployed_kw : float or array
        [T] the sum of their deployed MW, kW (0 where none).

    Returns
    -------
    float or np.ndarray
        [T] kW short, 0 where no deployment binds; a float for scalar inputs.

    Raises
    ------
    ValueError
        A NaN import where a deployment binds (an unmeasured interval has no shortfall to compute:
        the caller leaves it out), naming ``import_kw``.
    """
    imp = np.asarray(import_kw, dtype=float)
    limit = np.asarray(binding_limit_kw, dtype=float)
    cap = np.asarray(deployed_kw, dtype=float)
    binds = (cap > 0) & np.isfinite(limit)
    if np.any(binds & np.isnan(imp)):
        raise ValueError("import_kw: NaN in an interval a deployment binds (leave unmeasured intervals out)")
    over = np.where(binds, imp - np.where(binds, limit, 0.0), 0.0)
    over = np.where(over > FLOAT_NOISE_KW, over, 0.0)
    short = np.where(binds, np.minimum(over, cap), 0.0)
    return float(short) if short.ndim == 0 else short


def shortfall_shares(short_kw: float, deployed_kw: Mapping[str, float]) -> dict[str, float]:
    """Each binding deployment's share of an interval's shortfall, pro rata to its deployed MW.

    Parameters
    ----------
    short_kw : float
        The interval's shortfall, kW (:func:`deployment_shortfall_kw`).
    deployed_kw : mapping of str to float
        Deployment id (or row key) -> its deployed MW, kW, for the deployments that bind.

    Returns
    -------
    dict of str to float
        Key -> kW; the values add up to ``short_kw`` (all 0 when nothing was deployed).
    """
    total = float(sum(deployed_kw.values()))
    return {k: (float(short_kw) * float(kw) / total if total > 0 else 0.0) for k, kw in deployed_kw.items()}


def binding_revision(revisions: Sequence[tuple[datetime, datetime, Any]], at: datetime) -> Any | None:
    """The revision of one deployment that binds at ``at``: the latest received by then whose deadline
    has passed.

    An amendment asking fewer MW keeps the deadline held (it binds from its receipt); one asking more
    MW gets the product's deadline from the amendment (:func:`hashflex.control.ancillary.amended_deployment`),
    and until then the site is held to the revision before it, which it was given time to meet.

    Parameters
    ----------
    revisions : sequence of (received, deadline, revision)
        The accepted revisions in the order received: when each was received (the first: its
        instruction, or its arrival if earlier), its deadline, and any value to return for it.
    at : datetime
        The interval's start, timezone-aware.

    Returns
    -------
    Any or None
        The third item of the binding revision; None before the first revision's deadline.
    """
    found = None
    for received, deadline, value in revisions:
        if received <= at and deadline <= at:
            found = value
    return found
