"""Checkpoints of the whole training state, with the config that made them.

An Orbax `CheckpointManager` under `<workdir>/checkpoints` keeps the last few
steps. Each checkpoint holds two items: `state` (the batched `TrainState`) and
`meta` (the resolved config and a digest of the state, as JSON). Orbax writes
asynchronously: `save` returns at once and `close` blocks until the write is
committed; Orbax finalises a step directory only when it is complete, so a
half-written step is never listed as a checkpoint.

A workdir may be resumed with a changed config only in the fields of
`COMPATIBLE_FIELDS` (how long to run and how often to evaluate, log and
save); any other difference is refused, naming the fields. A field that a
checkpoint predates (added to the config later) counts as unchanged when the
current config holds its default.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from cpg_jax.training import config as config_lib
from cpg_jax.user_errors import UserError

# Changing these does not change the trajectory of training.
COMPATIBLE_FIELDS = frozenset({
    "num_steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints",
    # A run may resume on another mesh (candidates are the same on any mesh).
    "mesh.seeds", "mesh.item_shards",
    "tensorboard",
})
# num_steps shapes the learning-rate schedule unless it is constant.
SCHEDULE_DEPENDENT = frozenset({"num_steps"})


class IncompatibleCheckpointError(UserError, ValueError):
  """The workdir holds a checkpoint made with an incompatible config."""


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Fields whose change would alter training, as "field: saved -> current".

  Both sides are compared in their JSON form (the saved side went through
  JSON: tuples became lists). A field absent from the saved config (one the
  checkpoint predates) is compared with its default.
  """
  as_json = lambda c: config_lib.flatten_config(json.loads(json.dumps(dict(c))))
  # Fields the checkpoint predates take their default.
  old = {**as_json(config_lib.default_config().to_dict()), **as_json(saved)}
  new = as_json(current)
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


def state_digest(state) -> str:
  """SHA-256 over every leaf's dtype, shape and bytes (host-side).

  Stored beside each checkpoint and checked on restore: Orbax detects a
  missing or truncated file, the digest also catches flipped bytes.
  """
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


class DamagedCheckpointError(RuntimeError):
  """A checkpoint could not be read back intact."""


class NoIntactCheckpointError(UserError, RuntimeError):
  """The workdir has damaged checkpoints and none that reads back intact."""


class Checkpointer:
  """Saves and restores `(state, config)` pairs in `<workdir>/checkpoints`.

  Each step holds the items `state` and `meta` (`{"config": ..., "step": ...,
  "state_sha256": ...}`). Damaged steps found on restore are moved to
  `<workdir>/damaged_checkpoints/` so that they are neither read again nor
  overwritten.
  """

  def __init__(self, workdir: str, keep: int, log=print, host_view=None):
    """Opens (or creates) `<workdir>/checkpoints`; on every process.

    Args:
      workdir: the run's directory.
      keep: how many checkpoints to keep.
      log: where warnings about damaged checkpoints go.
      host_view: `state -> NumPy pytree` the digest is taken of (default: the
        arrays as they are); a sharded run passes its whole, unpadded state,
        so the digest does not depend on the mesh.
    """
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.damaged_directory = os.path.abspath(os.path.join(workdir, "damaged_checkpoints"))
    self._log = log
    self._host_view = host_view or (lambda state: state)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "meta"),
    )

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, config: Mapping[str, Any]) -> None:
    """Starts an asynchronous save of `state` and `config` at `step`."""
    meta = {"config": dict(config), "step": int(step),
            "state_sha256": state_digest(self._host_view(state))}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, step: int) -> dict[str, Any]:
    return dict(self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, step: int, abstract_state):
    """(state, meta) of `step`, into the structure of `abstract_state`.

    `abstract_state` carries the shapes (and, for a mesh, the shardings) of
    this run; a checkpoint written on another mesh restores into it, its
    item leaves padded or cut to this mesh's padding (only padding rows
    differ; the digest of the unpadded state checks that).

    Raises:
      DamagedCheckpointError: unreadable files or a digest mismatch.
    """
    try:
      meta = self.restore_meta(step)
      state = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state, strict=False)))["state"]
    except Exception as e:  # Orbax/TensorStore raise many types for bad files.
      raise DamagedCheckpointError(f"unreadable ({type(e).__name__}: {e})") from e
    if state_digest(self._host_view(state)) != meta.get("state_sha256"):
      raise DamagedCheckpointError("its contents do not match the digest saved with it")
    return state, meta

  def restore_latest_intact(self, abstract_state, check_config):
    """The newest checkpoint that reads back intact, or None.

    `check_config(saved_config)` is called on the newest readable metadata
    before any state is restored (it raises to refuse the workdir). Damaged
    steps are reported and moved aside, and older ones are tried.

    Returns:
      (step, state) or None when no checkpoint exists.
    Raises:
      NoIntactCheckpointError: checkpoints were damaged and none is left.
    """
    for step in reversed(self.all_steps()):
      try:
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, f"unreadable metadata ({type(e).__name__}: {e})")
        continue
      check_config(meta.get("config", {}))
      try:
        state, _ = self.restore(step, abstract_state)
      except DamagedCheckpointError as e:
        self._set_aside(step, str(e))
        continue
      return step, state
    if os.path.isdir(self.damaged_directory) and os.listdir(self.damaged_directory):
      raise NoIntactCheckpointError(
          f"no intact checkpoint is left in {self.directory}; the damaged ones are in "
          f"{self.damaged_directory}. Delete that folder to start this workdir from "
          "scratch, or use a new --workdir.")
    return None

  def _set_aside(self, step: int, reason: str) -> None:
    target = os.path.join(self.damaged_directory, f"{step}")
    if jax.process_index() == 0:  # One process moves it; the others wait for it.
      os.makedirs(self.damaged_directory, exist_ok=True)
      target = f"{target}.{int(time.time())}"
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"cpg_jax set aside checkpoint {step}")
    self._manager.reload()
    self._log(f"WARNING: checkpoint at step {step} is damaged: {reason}. "
              f"Moved it to {target}; falling back to an older checkpoint.")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state, shardings=None):
  """Shape/dtype structs of `state` (with `shardings`, a matching pytree of
  `jax.sharding.Sharding`, for a mesh): the restore target."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
