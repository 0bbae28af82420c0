"""TensorBoard event files: read back, they hold what metrics.jsonl holds.

The events are parsed with the reader of `training.tensorboard_log` (TFRecord
framing with CRC checks, tensorboardX's protobufs); the values are float32,
so they are compared with metrics.jsonl to float32 precision. A resumed run
must show every evaluated step once, with the values of an uninterrupted run.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cpg_jax.training import loop
from cpg_jax.training import spec as spec_lib
from cpg_jax.training import tensorboard_log
from tests.helpers import metrics_records
from tests.test_trainer import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(_):
  pass


class _Interrupt(Exception):
  pass


def _check_events_match_metrics(workdir, num_seeds=2):
  records = metrics_records(workdir)
  scalars = tensorboard_log.read_scalars(os.path.join(workdir, "tensorboard"))
  steps = [r["step"] for r in records]
  mean = scalars["eval/policy_value_mean"]
  assert [s for s, _ in mean] == steps  # Each evaluated step once, in order.
  np.testing.assert_allclose([v for _, v in mean], [r["policy_value_mean"] for r in records],
                             rtol=1e-6)
  for seed in range(num_seeds):
    per_seed = scalars[f"eval/policy_value/seed_{seed}"]
    assert [s for s, _ in per_seed] == steps
    np.testing.assert_allclose([v for _, v in per_seed],
                               [r["policy_value"][seed] for r in records], rtol=1e-6)
  for name in ("expected_value_mean", "recall_mean"):
    np.testing.assert_allclose([v for _, v in scalars[f"eval/{name}"]],
                               [r[name] for r in records], rtol=1e-6)
  return scalars


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  loop.train_and_evaluate(tiny_config(tensorboard=True), workdir, log=_quiet)
  return workdir


def test_events_hold_the_evaluations_and_progress(full_run):
  workdir = full_run
  scalars = _check_events_match_metrics(workdir)
  log_steps = list(range(10, 61, 10))  # log_every = 10, num_steps = 60.
  for tag in ("train/loss", "train/reward", "train/steps_per_sec"):
    assert [s for s, _ in scalars[tag]] == log_steps, tag
    assert all(np.isfinite(v) for _, v in scalars[tag])
  assert all(v > 0 for _, v in scalars["train/steps_per_sec"])
  assert len(tensorboard_log.event_files(os.path.join(workdir, "tensorboard"))) == 1


def _interrupt_at(message_part):
  def log(message):
    if message_part in message:
      raise _Interrupt(message)
  return log


@pytest.mark.parametrize("interrupt_message", [
    "eval step 40", pytest.param("eval step 20", marks=pytest.mark.slow)])
def test_a_resumed_run_shows_each_step_once(tmp_path, full_run, interrupt_message):
  """Interrupted after its checkpoint at 30 (or before any), then resumed:
  the events after the resume step are dropped and written again."""
  workdir, full = str(tmp_path / "resumed"), full_run
  with pytest.raises(_Interrupt):
    loop.train_and_evaluate(tiny_config(tensorboard=True), workdir,
                            log=_interrupt_at(interrupt_message))
  loop.train_and_evaluate(tiny_config(tensorboard=True), workdir, log=_quiet)
  scalars = _check_events_match_metrics(workdir)
  expected = tensorboard_log.read_scalars(os.path.join(full, "tensorboard"))
  for tag in ("train/loss", "train/reward", "eval/policy_value_mean"):
    assert [s for s, _ in scalars[tag]] == [s for s, _ in expected[tag]], tag
    np.testing.assert_array_equal([v for _, v in scalars[tag]], [v for _, v in expected[tag]])


def test_off_by_default_and_silent_on_other_processes(tmp_path):
  assert tiny_config().tensorboard is False
  assert spec_lib.from_config(tiny_config()).tensorboard is False
  for name, enabled, primary in (("off", False, True), ("other", True, False)):
    board = tensorboard_log.TensorBoardLog(str(tmp_path / name), enabled=enabled,
                                           is_primary=primary, resume_step=None)
    board.progress(10, 1.0, 2.0, 3.0)
    board.close()
    assert not board.active and not os.path.exists(tmp_path / name / "tensorboard")


def test_a_resume_within_the_same_second_in_one_process_keeps_the_earlier_events(
    tmp_path, monkeypatch):
  # tensorboardX names event files by the second; a frozen clock makes both
  # writers open in the same one (a fast in-process resume, as in a notebook).
  monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
  first = tensorboard_log.TensorBoardLog(str(tmp_path), enabled=True, is_primary=True,
                                         resume_step=None)
  first.progress(10, 1.0, 0.0, 5.0)
  first.close()
  second = tensorboard_log.TensorBoardLog(str(tmp_path), enabled=True, is_primary=True,
                                          resume_step=10)
  second.progress(20, 2.0, 0.0, 5.0)
  second.close()
  assert len(tensorboard_log.event_files(second.logdir)) == 2
  assert tensorboard_log.read_scalars(second.logdir)["train/loss"] == [(10, 1.0), (20, 2.0)]


def test_reader_stops_at_a_torn_record(tmp_path):
  board = tensorboard_log.TensorBoardLog(str(tmp_path), enabled=True, is_primary=True,
                                         resume_step=None)
  for step in (1, 2, 3):
    board.progress(step, float(step), 0.0, 10.0 * step)
  board.close()
  (path,) = tensorboard_log.event_files(board.logdir)
  with open(path, "r+b") as f:  # Cut the last record short, as a kill would.
    f.truncate(os.path.getsize(path) - 3)
  scalars = tensorboard_log.read_scalars(board.logdir)
  assert scalars["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
  # The last event written (steps/s at step 3) is the torn one.
  assert scalars["train/steps_per_sec"] == [(1, 10.0), (2, 20.0)]


def test_importing_it_pulls_in_no_tensorflow():
  code = ("import sys\nfrom cpg_jax.training import tensorboard_log\nimport tensorboardX\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'torch', 'tensorboard')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "[]"
