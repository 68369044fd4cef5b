"""Plausibility bounds for every inbound kind: one table, one pure check.

A message can be well formed (:func:`hashflex.messages.parse_message` accepts it) and still be
impossible: a renewable reading of 1e308 kW, a price of −1e308 $/MWh, a noise reading dated 1970,
telemetry from a miner the site does not have. Believed, such values switch off protections or send
every solve to its fallback. :func:`check_plausible` rejects them, naming the field path, the rule and
the bound, *before* anything is stored or acted on. Values inside the bounds are never changed
(no clipping): a real −$251/MWh or $9,000/MWh interval is planned as it is.

Rules (the ``rule`` part of :attr:`Rejection.rule`, the metrics label ``reason`` is ``<rule>:<field>``):

- ``out_of_bounds``: a number outside ``[lower, upper]`` (the table :data:`BOUNDS`).
- ``unknown_id``: a series key the site profile does not have (renewable source, receptor, miner).
- ``stale``: the time the data is about is older than the kind's staleness window (:data:`STALENESS_S`).
- ``future``: a timestamp later than ``now`` plus the clock-skew window (:data:`FUTURE_SKEW_S`), or,
  for kinds that are legitimately about the future (prices, DR events), beyond their horizon.

Safety direction: DR events and manager limits bind however old they are (an event in force must be
enforced: when in doubt, curtail), so they have no staleness window; their numeric bounds only reject
values that could never restrict this site (e.g. an import limit above ten times its size), and a
noise cap override is bounded above only (a lower cap is more restrictive, hence safe).

The module is split along its seams: the numbers and their sources in
:mod:`hashflex.plausibility.bounds`, the checks in :mod:`hashflex.plausibility.checks`; every name
below is importable from ``hashflex.plausibility`` as before.

Public API
----------
- :data:`BOUNDS` (tuple of :class:`Bound`), :func:`bounds_markdown` (the README table);
- :class:`PlausibilityContext` (``from_profile(profile)``: nameplates, miner ids, receptors, site size);
- :func:`check_plausible` ``(message, now, context) -> Rejection | None`` (pure, never raises);
- :func:`check_price_value` (one price row, shared with the HTTP price feed) and
  :func:`filter_price_frame` (drop implausible rows of a canonical price frame, keep the rest).
"""

from __future__ import annotations

from hashflex.plausibility.bounds import (
    BOUNDS,
    CARBON_MAX_KG_PER_MWH,
    DR_HORIZON_S,
    FUTURE_SKEW_S,
    HASHPRICE_MAX_USD_PER_PH_DAY,
    NOISE_MAX_DBA,
    NOISE_MIN_DBA,
    PRICE_CEILING_USD_MWH,
    PRICE_FLOOR_USD_MWH,
    PRICE_HORIZON_S,
    PRICE_INTERVAL_MAX_S,
    RENEWABLE_MARGIN,
    SITE_SCALE_MARGIN,
    STALENESS_S,
    TELEMETRY_MARGIN,
    Bound,
    bounds_markdown,
)
from hashflex.plausibility.checks import (
    PlausibilityContext,
    check_plausible,
    check_price_value,
    filter_price_frame,
)

__all__ = [
    "BOUNDS",
    "CARBON_MAX_KG_PER_MWH",
    "DR_HORIZON_S",
    "FUTURE_SKEW_S",
    "HASHPRICE_MAX_USD_PER_PH_DAY",
    "NOISE_MAX_DBA",
    "NOISE_MIN_DBA",
    "PRICE_CEILING_USD_MWH",
    "PRICE_FLOOR_USD_MWH",
    "PRICE_HORIZON_S",
    "PRICE_INTERVAL_MAX_S",
    "RENEWABLE_MARGIN",
    "SITE_SCALE_MARGIN",
    "STALENESS_S",
    "TELEMETRY_MARGIN",
    "Bound",
    "PlausibilityContext",
    "bounds_markdown",
    "check_plausible",
    "check_price_value",
    "filter_price_frame",
]
