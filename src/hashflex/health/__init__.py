"""Fleet health: readings, detectors, a health score per miner, a repair queue with a persisted log,
and a predictive-maintenance model (see the modules)."""
