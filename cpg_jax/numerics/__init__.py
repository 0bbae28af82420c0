"""The numerics: pure JAX, no ConfigDict, no knowledge of the layers above.

Score tables (`scores`, dense or item-blocked, over the one blocked scan of
`blocked`), counter-based Gumbel noise (`noise`), candidate sampling
(`sampling`), Plackett-Luce probabilities (`plackett_luce`, on the log-space
primitives of `log_space`), the estimators' surrogate losses (`estimators`,
over the `Rollout` of `rollout`), the late-stage rankers (`late_stage`) and
the ESR's score model (`model`). They take arrays, pytrees and small frozen
specs. See docs/architecture.md.
"""
