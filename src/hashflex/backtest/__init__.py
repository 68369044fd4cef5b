"""Backtests: what hashflex would have earned on real history, against the operator's baselines."""
