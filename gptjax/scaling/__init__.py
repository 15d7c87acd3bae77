"""Scaling studies (`gptjax sweep`, docs/scaling.md): a family of model sizes planned, trained
and collected into scaling-law fits with confidence intervals, tables and plots.

    family.py          the model families, token budgets, IsoFLOP size windows, LR rules
    runs.py            the plan of runs, the stored sweep config, each run's result and curves
    sweep.py           training the planned runs (resumable; in-process or as subprocesses)
    local.py           runs as local subprocesses, `sweep.workers` at a time
    cluster.py         the runs as shell lines, a SLURM array job or TPU queued resources
    collect.py         finished runs -> fits.json, results.{csv,md}, plots
    isoflop_fit.py     Chinchilla's approach 2: IsoFLOP profiles, N_opt(C), D_opt(C), frontier
    parametric_fit.py  Chinchilla's approach 3: L(N, D) = E + A/N^alpha + B/D^beta
    stats.py           power laws, log-log lines, bootstrap percentile intervals
    report.py, plots.py  the tables and figures of a collected sweep
    mup.py             muP's coordinate check (`python -m gptjax.scaling.mup`)
"""
