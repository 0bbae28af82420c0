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
import json
import os
import signal
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from cpg_jax import checkpointing
from cpg_jax import evaluation
from cpg_jax import experiment as experiment_lib
from cpg_jax import metrics_log
from cpg_jax import trainer


class WorkdirError(OSError):
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


def _next_boundary(step: int, config: ml_collections.ConfigDict) -> int:
  candidates = [config.num_steps]
  for every in (config.eval_every, config.log_every, config.checkpoint_every):
    candidates.append((step // every + 1) * every)
  return min(candidates)


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
  return list(range(config.seed, config.seed + config.num_seeds))


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


def _eval_record(step: int, metrics: dict, states, reference: dict,
                 steps_per_sec: float) -> dict[str, Any]:
  per_seed = {k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()}
  diverged = np.asarray(states.diverged)
  diverged_step = np.asarray(states.diverged_step)
  record: dict[str, Any] = {"step": int(step)}
  for name, values in per_seed.items():
    record[name] = [float(v) for v in values]
    record[f"{name}_mean"] = float(np.mean(values))
    record[f"{name}_std"] = float(np.std(values))
  record.update(reference)
  record["optimal_95"] = 0.95 * reference["optimal_value"]
  record["diverged"] = [int(s) if d else None for d, s in zip(diverged, diverged_step)]
  record["steps_per_sec"] = float(steps_per_sec)
  return record


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    step_fn: Callable = trainer.train_step,
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
  experiment = experiment_lib.build_experiment(config)
  _check_workdir(workdir)
  config_dict = config.to_dict()
  seeds = seeds_of(config)
  env = experiment.env

  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints, log=log)
  metrics_file = metrics_log.MetricsLog(workdir)
  fresh = jax.eval_shape(lambda: trainer.init_states(experiment, seeds))

  def refuse_if_incompatible(saved_config):
    differences = checkpointing.config_differences(saved_config, config_dict)
    if differences:
      checkpointer.close()
      raise checkpointing.IncompatibleCheckpointError(
          f"workdir {workdir!r} holds checkpoints made with a different config; "
          "these fields differ (saved -> now): " + "; ".join(differences)
          + ". Use a new --workdir, or restore the old values.")

  restored = checkpointer.restore_latest_intact(
      checkpointing.abstract_like(fresh), refuse_if_incompatible)
  if restored is not None:
    latest, states = restored
    metrics_file.truncate_after(latest)
    log(f"Resumed from {checkpointer.directory} at step {latest}.")
  else:
    latest = None
    states = trainer.init_states(experiment, seeds)
    metrics_file.truncate_after(-1)
  metrics_log.atomic_write_text(
      os.path.join(workdir, metrics_log.CONFIG_FILE),
      json.dumps(config_dict, indent=2, sort_keys=True) + "\n")

  step = int(np.asarray(states.step)[0])
  chunk = trainer.make_train_chunk(experiment, step_fn)
  evaluate = evaluation.make_evaluate(experiment)
  reference = evaluation.reference_values(experiment, env, config.env.seed)
  log(f"Training {config.estimator} | K={config.num_candidates} L={config.num_outputs} "
      f"M={config.num_models} lsr={config.lsr} | seeds {seeds[0]}..{seeds[-1]} | "
      f"{config.num_steps} steps | optimum {reference['optimal_value']:.4f} | "
      f"workdir {workdir}")

  progress = metrics_log.Progress(config.num_steps, step)
  if step == 0 and not metrics_log.read_metrics(workdir):
    metrics_file.append(_eval_record(0, evaluate(states, env), states, reference, 0.0))

  stopped_early = False
  last_saved = latest
  try:
    with _sigterm_requests_stop() as stop:
      while step < config.num_steps:
        target = _next_boundary(step, config)
        states, step_metrics = chunk(states, env, target - step)
        step = target
        jax.block_until_ready(states)
        rate = progress.rate(step)
        if step % config.log_every == 0 or step == config.num_steps:
          loss = np.asarray(step_metrics["loss"], np.float64)
          reward = np.asarray(step_metrics["reward"], np.float64)
          progress.line(step, rate, {"loss": float(np.nanmean(loss)),
                                     "train_reward": float(np.nanmean(reward)),
                                     "diverged": int(np.asarray(states.diverged).sum())})
        if step % config.eval_every == 0 or step == config.num_steps:
          record = _eval_record(step, evaluate(states, env), states, reference, rate)
          metrics_file.append(record)
          log(f"  eval step {step}: policy value {record['policy_value_mean']:.4f} "
              f"(optimum {reference['optimal_value']:.4f}), "
              f"recall {record['recall_mean']:.3f}")
        if (step % config.checkpoint_every == 0 or step == config.num_steps
            or stop.requested):
          checkpointer.save(step, states, config_dict)
          last_saved = step
        if stop.requested:
          stopped_early = True
          log(f"SIGTERM: saved a checkpoint at step {step}; exiting.")
          break
    if last_saved != step:
      checkpointer.save(step, states, config_dict)
  finally:
    # Also on an exception: an asynchronous save in flight is completed, so
    # the checkpoint it started is either whole or absent.
    checkpointer.close()
  if not stopped_early:
    log(f"Done: {step} steps. Metrics in {metrics_file.path}")
  return states
