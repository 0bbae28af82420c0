"""The interrupt state machine of `training.interrupts`, phase by phase.

Signals are handed to `Interrupts.handle` directly (real signals to train.py
are in tests/test_crash_resume.py); with `hard_exit=False` an abort raises
KeyboardInterrupt instead of ending the process.
"""

import os
import shlex
import shutil
import signal
import sys

import pytest

from cpg_jax.training import interrupts


def _state(phase, last_saved=None):
  lines = []
  state = interrupts.Interrupts("python train.py --workdir=W", out=lines.append,
                                hard_exit=False)
  state.phase, state.last_saved = phase, last_saved
  return state, lines


def test_setup_interrupt_stops_and_says_nothing_was_saved():
  state, lines = _state(interrupts.SETUP, last_saved=3000)
  with pytest.raises(KeyboardInterrupt):
    state.handle(signal.SIGINT)
  assert lines == ["Ctrl-C (SIGINT) before training started: stopped; nothing was saved. "
                   "The workdir still holds its checkpoint at step 3000. Start it again "
                   "with:\n  python train.py --workdir=W"]


def test_first_interrupt_requests_a_stop_and_the_second_aborts():
  state, lines = _state(interrupts.TRAINING)
  state.chunk_end = 2000
  state.handle(signal.SIGINT)
  assert state.stop_requested and state.requested_by == "Ctrl-C (SIGINT)"
  assert lines[-1] == ("Ctrl-C (SIGINT): finishing the chunk that ends at step 2000, then "
                       "saving a checkpoint and exiting. Press Ctrl-C again to stop at once "
                       "without saving; that loses every step of this run, as there is no "
                       "checkpoint yet.")
  with pytest.raises(KeyboardInterrupt):
    state.handle(signal.SIGINT)
  assert lines[-1].startswith("Second Ctrl-C: stopped at once without saving; lost: every "
                              "step of this run")


def test_repeated_sigterm_does_not_abort():
  state, lines = _state(interrupts.TRAINING, last_saved=1000)
  state.handle(signal.SIGTERM)
  state.handle(signal.SIGTERM)
  assert state.requested_by == "SIGTERM" and len(lines) == 1


def test_abort_while_the_stop_checkpoint_is_written_names_both():
  state, lines = _state(interrupts.TRAINING, last_saved=1000)
  state.handle(signal.SIGINT)
  state.note_saved(1500)
  state.saving = 1500
  with pytest.raises(KeyboardInterrupt):
    state.handle(signal.SIGINT)
  assert ("lost: the checkpoint at step 1500 being written, and the steps after step 1000, "
          "the last checkpoint.") in lines[-1]


def test_finishing_phase_says_what_is_saved():
  state, lines = _state(interrupts.FINISHING, last_saved=20000)
  state.after_training_hint = "Draw the learning curves with: python -m ... W"
  with pytest.raises(KeyboardInterrupt):
    state.handle(signal.SIGINT)
  assert "Training had finished and its final checkpoint is saved. Draw" in lines[-1]
  stopped, lines = _state(interrupts.FINISHING, last_saved=4000)
  stopped.requested_by = "SIGTERM"
  with pytest.raises(KeyboardInterrupt):
    stopped.handle(signal.SIGINT)
  assert "the checkpoint at step 4000 is saved. Resume with:" in lines[-1]


def test_library_call_restores_the_previous_handlers():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with interrupts.during_training(lambda _: None, last_saved=None) as state:
    assert signal.getsignal(signal.SIGINT) is not before[0]
    signal.raise_signal(signal.SIGTERM)  # Delivered to this thread: a stop request.
    assert state.requested_by == "SIGTERM"
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_command_is_what_a_shell_reruns():
  argv = ["train.py", "--config=configs/synthetic.py:K=20", "--workdir=runs/a b"]
  command = interrupts.command_line(argv)
  words = shlex.split(command)
  assert words[1:] == argv
  # The interpreter: by a name that finds this one on PATH, else its path.
  found = shutil.which(words[0]) or words[0]
  assert os.path.abspath(found) == os.path.abspath(sys.executable)
