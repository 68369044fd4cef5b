"""The optimizer: the site's schedule as a mixed-integer program, solved by HiGHS (model floor).

Pure functions over plain arrays, no I/O and no clock. The modules, in the order a plan is made:

- ``problem`` / ``build``: the input arrays over T planning intervals (`Problem`) and
  `problem_from_profile`, the one builder the loop, ``hashflex plan``, the backtest and
  ``evaluate`` use; ``coarsen``: the multiresolution grid; ``compute_problem``: GPU compute inputs.
- ``milp`` (the Pyomo model, one ``define_*`` per constraint family; the equations are in
  ``optimization/FORMULATION.md``), ``compute`` (its GPU part), ``highs_compile`` (the model
  compiled straight into HiGHS, with the warm-start basis cache).
- ``solve``: LP relaxation, ``rounding`` into a MIP start, the MIP within its gap, and the greedy
  ``fallback`` when HiGHS fails or runs out of time.
- ``schedule``: the answer (`Schedule`), every figure recomputed from the integer counts;
  ``explain``: one binding reason per interval, in words a site manager reads.
"""
