"""`train_and_evaluate`: the host-side loop around the compiled chunks.

Python runs only between chunks. Chunk ends are the multiples of `eval_every`,
`log_every` and `checkpoint_every` (and `num_steps`), so they do not depend on
where a run was resumed. At each end, in this order: progress line, evaluation
(appended to metrics.jsonl), checkpoint. A checkpoint at step t therefore
always comes after the evaluation record of step t, and a resume from t drops
only records that a later, lost part of the run wrote (in metrics.jsonl and in
the TensorBoard events alike).

Setup comes first: restore or start fresh (said either way), reference
values, compiling every chunk length and the evaluation ahead of time
(`training.compiled`), the step-0 evaluation. Then the training phase, in
which an interrupt asks to stop at the end of the chunk with a checkpoint
(`training.interrupts`).

On several devices the loop is the same: the states and the environment live
on the mesh (`training.mesh`), host copies are taken for the records
(`training.distributed.to_host`), and with several processes every process
runs this loop while only the primary one writes files and lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from cpg_jax.environments.base import Environment
from cpg_jax.training import checkpointing
from cpg_jax.training import compiled
from cpg_jax.training import distributed
from cpg_jax.training import evaluation
from cpg_jax.training import interrupts
from cpg_jax.training import mesh as mesh_lib
from cpg_jax.training import metrics_log
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib
from cpg_jax.training import tensorboard_log
from cpg_jax.user_errors import UserError


class WorkdirError(UserError, OSError):
  """The workdir cannot be used (not writable, not a directory)."""


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
        f"workdir {workdir!r} is not usable: {e.strerror or e}. Pick a directory "
        "you can write to, with free space.") from e


def _next_boundary(step: int, spec: spec_lib.RunSpec) -> int:
  candidates = [spec.num_steps]
  for every in (spec.eval_every, spec.log_every, spec.checkpoint_every):
    candidates.append((step // every + 1) * every)
  return min(candidates)


def chunk_lengths(step: int, spec: spec_lib.RunSpec) -> list[int]:
  """The distinct lengths of the chunks from `step` to `num_steps`."""
  lengths = set()
  while step < spec.num_steps:
    target = _next_boundary(step, spec)
    lengths.add(target - step)
    step = target
  return sorted(lengths)


@dataclasses.dataclass
class _Run:
  """The pieces of one invocation of `train_and_evaluate`."""

  spec: spec_lib.RunSpec
  pipeline: pipeline_lib.Pipeline
  env: Environment
  mesh: jax.sharding.Mesh | None
  workdir: str
  config_dict: dict[str, Any]
  checkpointer: checkpointing.Checkpointer
  metrics_file: metrics_log.MetricsLog
  log: Callable[[str], None]
  primary: bool
  board: tensorboard_log.TensorBoardLog | None = None
  closed: bool = False

  def close(self) -> None:
    """Completes an asynchronous save in flight (so the checkpoint it started
    is whole or absent) and flushes TensorBoard; idempotent."""
    if self.closed:
      return
    self.closed = True
    try:
      self.checkpointer.close()
    finally:
      if self.board is not None:
        self.board.close()


def _open(config: ml_collections.ConfigDict, workdir: str, log) -> _Run:
  """Validates, loads data, lays out the mesh and opens the workdir
  (nothing compiled yet)."""
  spec = spec_lib.from_config(config)
  shape = mesh_lib.resolve(spec.mesh_seeds, spec.mesh_items, jax.device_count(),
                           spec.num_seeds)
  mesh = None if shape.is_single_device else mesh_lib.build(shape)
  pipeline, env = pipeline_lib.build(spec, None if mesh is None else shape.item_shards)
  if mesh is not None:
    env = mesh_lib.place_env(env, mesh, pipeline.item_shards)
  _check_workdir(workdir)
  primary = distributed.is_primary()
  quiet = lambda _: None
  num_items = env.num_items
  host_view = lambda states: mesh_lib.unpad_states(distributed.to_host(states), num_items)
  return _Run(spec=spec, pipeline=pipeline, env=env, mesh=mesh, workdir=workdir,
              config_dict=config.to_dict(),
              checkpointer=checkpointing.Checkpointer(
                  workdir, spec.keep_checkpoints, log=log if primary else quiet,
                  host_view=host_view),
              metrics_file=metrics_log.MetricsLog(workdir), log=log if primary else quiet,
              primary=primary)


def _mesh_text(run: _Run) -> str:
  if run.mesh is None:
    return "1 device"
  shape = run.mesh.shape
  hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"mesh {shape[mesh_lib.SEED_AXIS]} seeds x {shape[mesh_lib.ITEM_AXIS]} items "
          f"({jax.device_count()} {jax.devices()[0].platform} devices{hosts})")


def _restore_or_init(run: _Run):
  """(latest checkpointed step or None, batched states on the run's mesh);
  refuses a workdir whose checkpoints came from an incompatible config."""
  seeds, shards = run.spec.seeds, run.pipeline.item_shards
  fresh = jax.eval_shape(lambda: state_lib.init_states(run.pipeline, seeds))
  # The restore target carries this run's layout, so a checkpoint written on
  # another mesh (or device count) is read into it.
  if run.mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, fresh)
  else:
    if shards is not None:
      fresh = jax.eval_shape(lambda s: mesh_lib.pad_states(s, shards.padded_size), fresh)
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(run.mesh, spec),
                             mesh_lib.state_specs(fresh, shards is not None))

  def refuse_if_incompatible(saved_config):
    differences = checkpointing.config_differences(saved_config, run.config_dict)
    if differences:
      run.checkpointer.close()
      raise checkpointing.IncompatibleCheckpointError(
          f"workdir {run.workdir!r} holds checkpoints made with a different config; "
          "these fields differ (saved -> now): " + "; ".join(differences)
          + ". Use a new --workdir, or restore the old values.")

  restored = run.checkpointer.restore_latest_intact(
      checkpointing.abstract_like(fresh, shardings), refuse_if_incompatible)
  if restored is not None:
    latest, states = restored
    if run.primary:
      run.metrics_file.truncate_after(latest)
    run.log(f"Resumed from step {latest} (checkpoint in {run.checkpointer.directory}; "
            f"{_mesh_text(run)}).")
    return latest, states
  if run.primary:
    run.metrics_file.truncate_after(-1)
  run.log(f"Starting fresh at step 0 (no checkpoint in {run.checkpointer.directory}).")
  states = state_lib.init_states(run.pipeline, seeds)
  if run.mesh is not None:
    states = mesh_lib.place_states(states, run.mesh, shards)
  return None, states


def _record(step: int, metrics: dict, states, reference: dict,
            steps_per_sec: float) -> metrics_log.EvalRecord:
  diverged, diverged_step = distributed.to_host((states.diverged, states.diverged_step))
  return metrics_log.EvalRecord.from_evaluation(
      step, distributed.to_host(metrics), diverged, diverged_step, reference, steps_per_sec)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    step_fn: Callable = step_lib.train_step,
    log: Callable[[str], None] = print,
):
  """Trains `config.num_seeds` seeds in one program, resuming from `workdir`.

  An interrupt (SIGINT, SIGTERM) during training stops at the end of the
  chunk with a checkpoint (`training.interrupts`).

  Args:
    config: the experiment config (validated here, before compiling).
    workdir: where config.json, metrics.jsonl and checkpoints/ live.
    step_fn: the per-seed training step (tests inject failures through it).
    log: where human-readable lines go (the primary process's only).
  Returns:
    The final batched `TrainState` (leading `[seeds]` axis; on the mesh
    when there are several devices).
  Raises:
    ConfigError, DataFileError, WorkdirError, IncompatibleCheckpointError,
    NoIntactCheckpointError: before anything is compiled.
  """
  run = _open(config, workdir, log)
  latest, states = _restore_or_init(run)
  interrupts.note_restored(latest)
  if run.primary:
    metrics_log.atomic_write_text(
        os.path.join(workdir, metrics_log.CONFIG_FILE),
        json.dumps(run.config_dict, indent=2, sort_keys=True) + "\n")
  try:
    run.board = tensorboard_log.TensorBoardLog(
        workdir, enabled=run.spec.tensorboard, is_primary=run.primary,
        resume_step=latest, first_seed=run.spec.seed)
    with distributed.fail_fast_if_a_peer_dies():
      programs, reference = _prepare(run, states, step_fn)
      with interrupts.during_training(run.log, latest) as stop:
        try:
          states = _train(run, programs, reference, states, latest, stop)
        finally:
          run.close()  # A second Ctrl-C while the last checkpoint is written aborts it.
  finally:
    run.close()
  step = int(distributed.to_host(states.step)[0])
  if stop.stop_requested:
    stop.saving = None
    run.log(interrupts.stopped_message(stop, step))
  else:
    run.log(f"Done: {step} steps. Metrics in {run.metrics_file.path}")
  return states


def _prepare(run: _Run, states, step_fn):
  """Setup before the first chunk: reference values, compilation, the step-0
  evaluation. Returns (the compiled programs, the reference values)."""
  spec, env, log = run.spec, run.env, run.log
  step = int(distributed.to_host(states.step)[0])
  reference = evaluation.reference_values(run.pipeline, env, spec.env.seed, run.mesh)
  seeds = spec.seeds
  log(f"Training {spec.estimator} | K={spec.num_candidates} L={spec.num_outputs} "
      f"M={spec.num_models} lsr={spec.lsr.name} | seeds {seeds[0]}..{seeds[-1]} | "
      f"{spec.num_steps} steps | {_mesh_text(run)} | optimum "
      f"{reference['optimal_value']:.4f} | workdir {run.workdir}")
  programs = compiled.compile_run(run.pipeline, states, env, chunk_lengths(step, spec),
                                  step_fn, run.mesh)
  log(f"Compiled in {programs.compile_seconds:.1f} s.")
  # One decision for all processes (the evaluation is a collective program).
  if step == 0 and distributed.any_process(not metrics_log.read_records(run.workdir)):
    _evaluate(run, programs, reference, states, 0, 0.0)
  return programs, reference


def _evaluate(run: _Run, programs, reference, states, step: int, rate: float) -> None:
  """Evaluates, appends the record to metrics.jsonl and TensorBoard, prints it."""
  record = _record(step, programs.evaluate(states, run.env), states, reference, rate)
  if run.primary:
    run.metrics_file.append(record)
  run.board.evaluation(record)
  run.log(f"  eval step {step}: policy value {record.mean('policy_value'):.4f} "
          f"(optimum {reference['optimal_value']:.4f}), "
          f"recall {record.mean('recall'):.3f}")


def _progress(run: _Run, progress, step: int, rate: float, step_metrics, states) -> None:
  # Collectives with several processes: every process takes the host copies.
  step_metrics, diverged = distributed.to_host((step_metrics, states.diverged))
  loss = float(np.nanmean(np.asarray(step_metrics["loss"], np.float64)))
  reward = float(np.nanmean(np.asarray(step_metrics["reward"], np.float64)))
  if not run.primary:
    return
  progress.line(step, rate, {"loss": loss, "train_reward": reward,
                             "diverged": int(np.asarray(diverged).sum())})
  run.board.progress(step, loss, reward, rate)


def _train(run: _Run, programs, reference, states, latest: int | None, stop):
  """The chunks from the states' step to `num_steps`, or to the end of the
  chunk in which a stop was requested (`stop`). Returns the states."""
  spec = run.spec
  step = int(distributed.to_host(states.step)[0])
  progress = metrics_log.Progress(spec.num_steps, step)  # The clock starts now.
  last_saved = latest
  while step < spec.num_steps:
    target = _next_boundary(step, spec)
    stop.chunk_end = target
    states, step_metrics = programs.chunk(states, run.env, target - step)
    step = target
    jax.block_until_ready(states)
    rate = progress.rate(step)
    if step % spec.log_every == 0 or step == spec.num_steps:
      _progress(run, progress, step, rate, step_metrics, states)
    if step % spec.eval_every == 0 or step == spec.num_steps:
      _evaluate(run, programs, reference, states, step, rate)
    # Every process stops at the same chunk when any of them was asked to.
    stopping = distributed.any_process(stop.stop_requested)
    if step % spec.checkpoint_every == 0 or step == spec.num_steps or stopping:
      run.board.flush()  # Events up to a checkpoint are on disk before it.
      run.checkpointer.save(step, states, run.config_dict)
      stop.note_saved(step)
      last_saved = step
    if stopping:
      if not stop.stop_requested:
        stop.requested_by = "A stop on another process"
      stop.saving = step
      return states
  if last_saved != step:
    run.checkpointer.save(step, states, run.config_dict)
  return states
