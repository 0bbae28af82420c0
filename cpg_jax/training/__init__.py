"""The training side: from a config to trained seeds and a workdir.

`config` (defaults and validation; no JAX) -> `spec` (the typed, frozen
`RunSpec`) -> `pipeline` (the environment and the static pieces) -> `state`
(the `TrainState` pytree), `step` (the compiled step and chunk, with
`interaction` wiring the environment to the policy and `streams` giving the
keys; `compiled` compiles them ahead of time), `evaluation`, and the host
loop `loop` with `checkpointing`, `metrics_log`, `tensorboard_log` and
`interrupts`; `timing` measures a config's run; `cli` and `logging_setup`
are `train.py`'s front end. See docs/architecture.md.
"""
