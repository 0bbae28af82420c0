"""The training side: from a config to trained seeds and a workdir.

`config` (defaults and validation; no JAX) -> `spec` (the typed, frozen
`RunSpec`) -> `pipeline` (the environment and the static pieces) -> `state`
(the `TrainState` pytree), `step` (the compiled step and chunk, with
`interaction` wiring the environment to the policy and `streams` giving the
keys), `evaluation`, and the host loop `loop` with `checkpointing` and
`metrics_log`; `cli` is `train.py`'s front end. See docs/architecture.md.
"""
