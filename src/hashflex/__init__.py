"""hashflex: a grid- and neighbour-aware controller for bitcoin mining sites."""

__version__ = "0.1.0"
