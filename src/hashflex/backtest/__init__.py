"""Backtests: what hashflex would have earned on real history, against the operator's baselines.

Modules
-------
``runner``   inputs (``load_prices``, ``build_actuals``), the closed loop (``simulate_policy``: the real
             ``ControlLoop`` on a simulated clock and site, the daemon's forecast over what was
             published by each tick), the oracle (``run_oracle``), ``run_backtest``, and ``account``:
             the ONE function that prices any policy's unit counts at the actual RT prices.
``policies`` the planners in the loop's solver slot: mpc (``ReplanningPlanner``), ``ThresholdPlanner``,
             ``AlwaysOnPlanner``; ``oracle_counts`` (perfect foresight, one MILP per day).
``summary``  per-interval frame, ``summarize`` (every figure from that frame alone), the
             ``summary.json`` contract (documented there), side-by-side and ratio tables.
``plot``     one PNG: price, load by mode, noise against the cap, cumulative profit per policy.
``cli``      ``add_backtest_parsers(subparsers)``: ``hashflex backtest`` and ``hashflex evaluate``.

Example::

    from hashflex.backtest.runner import build_actuals, load_prices, run_backtest
    from hashflex.backtest.summary import summary_document
    prices = load_prices(profile, ["RTM-2020-02.csv"])          # DAM-2020-02.csv beside it is picked up
    result = run_backtest(profile, build_actuals(profile, prices, "2020-02-03", "2020-02-10"),
                          ["mpc", "threshold", "always-on", "oracle"])
    summary_document(result)["policies"]["mpc"]["profit_ratio_to_oracle"]
"""
