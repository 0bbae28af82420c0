"""Checkpoints of the whole training state, with the config that made them.

An Orbax `CheckpointManager` under `<workdir>/checkpoints` keeps the last few
steps. Each checkpoint holds two items: `state` (the batched `TrainState`) and
`config` (the resolved config as JSON). Orbax writes asynchronously: `save`
returns at once and `wait` blocks until the write is committed; Orbax
finalises a step directory only when it is complete, so a half-written step
is never listed as a checkpoint.

A workdir may be resumed with a changed config only in the fields of
`COMPATIBLE_FIELDS` (how long to run and how often to evaluate, log and
save); any other difference is refused, naming the fields.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

# Changing these does not change the trajectory of training.
COMPATIBLE_FIELDS = frozenset({
    "num_steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints",
})
# num_steps shapes the learning-rate schedule unless it is constant.
SCHEDULE_DEPENDENT = frozenset({"num_steps"})


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint made with an incompatible config."""


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"env": {"name": "x"}} -> {"env.name": "x"}."""
  flat = {}
  for name, value in config.items():
    path = f"{prefix}{name}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, path + "."))
    else:
      flat[path] = value
  return flat


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Fields whose change would alter training, as "field: saved -> current"."""
  old, new = flatten_config(saved), flatten_config(current)
  allowed = set(COMPATIBLE_FIELDS)
  if new.get("lr_schedule", "constant") != "constant":
    allowed -= SCHEDULE_DEPENDENT
  differences = []
  for field in sorted(set(old) | set(new)):
    if field in allowed:
      continue
    a, b = old.get(field, "<absent>"), new.get(field, "<absent>")
    if a != b:
      differences.append(f"{field}: {a!r} -> {b!r}")
  return differences


class Checkpointer:
  """Saves and restores `(state, config)` pairs in `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "config"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, config: Mapping[str, Any]) -> None:
    """Starts an asynchronous save of `state` and `config` at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(dict(config))))

  def restore_config(self, step: int) -> dict[str, Any]:
    return dict(self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

  def restore_state(self, step: int, abstract_state):
    """Restores the state into the structure (and dtypes) of `abstract_state`."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state):
  """Shape/dtype structs of `state`, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
