"""Tools that work on workdirs: the paper's experiment table (`paper`), the
sweep runner (`sweep`) and the report and plots (`report`).

`paper`, `sweep` and `report` import without JAX: they read files and start
`train.py` processes. See docs/architecture.md.
"""
