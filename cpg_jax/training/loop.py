"""`train_and_evaluate`: the host-side loop around the compiled chunks.

Python runs only between chunks. Chunk ends are the multiples of `eval_every`,
`log_every` and `checkpoint_every` (and `num_steps`), so they do not depend on
where a run was resumed. At each end, in this order: progress line, evaluation
(appended to metrics.jsonl), checkpoint. A checkpoint at step t therefore
always comes after the evaluation record of step t, and a resume from t drops
only records that a later, lost part of the run wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from cpg_jax.environments.base import Environment
from cpg_jax.training import checkpointing
from cpg_jax.training import evaluation
from cpg_jax.training import metrics_log
from cpg_jax.training import pipeline as pipeline_lib
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import state as state_lib
from cpg_jax.training import step as step_lib
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


class _StopRequest:
  """Turns SIGTERM into a request to checkpoint and exit after the chunk."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del signum, frame
    self.requested = True


@contextlib.contextmanager
def _sigterm_requests_stop():
  stop = _StopRequest()
  try:
    previous = signal.signal(signal.SIGTERM, stop)
  except ValueError:  # Not the main thread: no handler, no graceful stop.
    yield stop
    return
  try:
    yield stop
  finally:
    signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class _Run:
  """The pieces of one invocation of `train_and_evaluate`."""

  spec: spec_lib.RunSpec
  pipeline: pipeline_lib.Pipeline
  env: Environment
  workdir: str
  config_dict: dict[str, Any]
  checkpointer: checkpointing.Checkpointer
  metrics_file: metrics_log.MetricsLog
  log: Callable[[str], None]


def _open(config: ml_collections.ConfigDict, workdir: str, log) -> _Run:
  """Validates, loads data and opens the workdir (nothing compiled yet)."""
  spec = spec_lib.from_config(config)
  pipeline, env = pipeline_lib.build(spec)
  _check_workdir(workdir)
  return _Run(spec=spec, pipeline=pipeline, env=env, workdir=workdir,
              config_dict=config.to_dict(),
              checkpointer=checkpointing.Checkpointer(workdir, spec.keep_checkpoints, log=log),
              metrics_file=metrics_log.MetricsLog(workdir), log=log)


def _restore_or_init(run: _Run):
  """(latest checkpointed step or None, batched states); refuses a workdir
  whose checkpoints came from an incompatible config."""
  seeds = run.spec.seeds
  fresh = jax.eval_shape(lambda: state_lib.init_states(run.pipeline, seeds))

  def refuse_if_incompatible(saved_config):
    differences = checkpointing.config_differences(saved_config, run.config_dict)
    if differences:
      run.checkpointer.close()
      raise checkpointing.IncompatibleCheckpointError(
          f"workdir {run.workdir!r} holds checkpoints made with a different config; "
          "these fields differ (saved -> now): " + "; ".join(differences)
          + ". Use a new --workdir, or restore the old values.")

  restored = run.checkpointer.restore_latest_intact(
      checkpointing.abstract_like(fresh), refuse_if_incompatible)
  if restored is not None:
    latest, states = restored
    run.metrics_file.truncate_after(latest)
    run.log(f"Resumed from {run.checkpointer.directory} at step {latest}.")
    return latest, states
  run.metrics_file.truncate_after(-1)
  return None, state_lib.init_states(run.pipeline, seeds)


def _record(step: int, metrics: dict, states, reference: dict,
            steps_per_sec: float) -> metrics_log.EvalRecord:
  return metrics_log.EvalRecord.from_evaluation(
      step, metrics, states.diverged, states.diverged_step, reference, steps_per_sec)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    step_fn: Callable = step_lib.train_step,
    log: Callable[[str], None] = print,
):
  """Trains `config.num_seeds` seeds in one program, resuming from `workdir`.

  Args:
    config: the experiment config (validated here, before compiling).
    workdir: where config.json, metrics.jsonl and checkpoints/ live.
    step_fn: the per-seed training step (tests inject failures through it).
    log: where human-readable lines go.
  Returns:
    The final batched `TrainState` (leading `[seeds]` axis).
  Raises:
    ConfigError, DataFileError, WorkdirError, IncompatibleCheckpointError,
    NoIntactCheckpointError: before anything is compiled.
  """
  run = _open(config, workdir, log)
  latest, states = _restore_or_init(run)
  metrics_log.atomic_write_text(
      os.path.join(workdir, metrics_log.CONFIG_FILE),
      json.dumps(run.config_dict, indent=2, sort_keys=True) + "\n")
  try:
    states, stopped_early = _train(run, states, latest, step_fn)
  finally:
    # Also on an exception: an asynchronous save in flight is completed, so
    # the checkpoint it started is either whole or absent.
    run.checkpointer.close()
  if not stopped_early:
    log(f"Done: {int(np.asarray(states.step)[0])} steps. Metrics in {run.metrics_file.path}")
  return states


def _train(run: _Run, states, latest: int | None, step_fn):
  """The chunks from the states' step to `num_steps`. Returns (states,
  whether a stop request ended it early)."""
  spec, env, log = run.spec, run.env, run.log
  step = int(np.asarray(states.step)[0])
  chunk = step_lib.make_train_chunk(run.pipeline, step_fn)
  evaluate = evaluation.make_evaluate(run.pipeline)
  reference = evaluation.reference_values(run.pipeline, env, spec.env.seed)
  seeds = spec.seeds
  log(f"Training {spec.estimator} | K={spec.num_candidates} L={spec.num_outputs} "
      f"M={spec.num_models} lsr={spec.lsr.name} | seeds {seeds[0]}..{seeds[-1]} | "
      f"{spec.num_steps} steps | optimum {reference['optimal_value']:.4f} | "
      f"workdir {run.workdir}")

  progress = metrics_log.Progress(spec.num_steps, step)
  if step == 0 and not metrics_log.read_records(run.workdir):
    run.metrics_file.append(_record(0, evaluate(states, env), states, reference, 0.0))

  last_saved = latest
  with _sigterm_requests_stop() as stop:
    while step < spec.num_steps:
      target = _next_boundary(step, spec)
      states, step_metrics = chunk(states, env, target - step)
      step = target
      jax.block_until_ready(states)
      rate = progress.rate(step)
      if step % spec.log_every == 0 or step == spec.num_steps:
        loss = np.asarray(step_metrics["loss"], np.float64)
        reward = np.asarray(step_metrics["reward"], np.float64)
        progress.line(step, rate, {"loss": float(np.nanmean(loss)),
                                   "train_reward": float(np.nanmean(reward)),
                                   "diverged": int(np.asarray(states.diverged).sum())})
      if step % spec.eval_every == 0 or step == spec.num_steps:
        record = _record(step, evaluate(states, env), states, reference, rate)
        run.metrics_file.append(record)
        log(f"  eval step {step}: policy value {record.mean('policy_value'):.4f} "
            f"(optimum {reference['optimal_value']:.4f}), "
            f"recall {record.mean('recall'):.3f}")
      if step % spec.checkpoint_every == 0 or step == spec.num_steps or stop.requested:
        run.checkpointer.save(step, states, run.config_dict)
        last_saved = step
      if stop.requested:
        log(f"SIGTERM: saved a checkpoint at step {step}; exiting.")
        return states, True
  if last_saved != step:
    run.checkpointer.save(step, states, run.config_dict)
  return states, False
