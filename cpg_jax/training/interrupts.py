"""Ctrl-C (SIGINT) and SIGTERM: stop at the end of a chunk with a checkpoint.

A run goes through three phases, and an interrupt means something different
in each:

  setup      imports, flags, data, restoring, compiling, the step-0
             evaluation. An interrupt exits at once (status 128 + signal
             number, e.g. 130 for Ctrl-C), saying that nothing was saved.
  training   the chunks. The first interrupt (SIGINT or SIGTERM) asks the
             loop to stop at the end of the current chunk: it saves a
             checkpoint there (also before the first periodic one), prints
             the command that resumes, and the command exits with 0. A
             second Ctrl-C aborts at once (status 130), saying what is lost:
             the steps after the last checkpoint. A repeated SIGTERM changes
             nothing (schedulers send one, then SIGKILL).
  finishing  training is done (or stopped) and saved; an interrupt exits at
             once and says how to draw the plot (or to resume).

`train.py` calls `install_for_command` first thing, before anything slow is
imported. Python runs a signal handler only between bytecodes of the main
thread, so a Ctrl-C during a long XLA call (compilation, a chunk) would wait
for the call to end; instead the C-level handler writes the signal number to
a pipe (`signal.set_wakeup_fd`) that a watcher thread reads, and the thread
acts at once: it sets the stop request, or prints and `os._exit`s (no
traceback, no half-torn-down interpreter under running XLA threads, which is
where the segfault came from). What is on disk stays consistent: checkpoints
are committed by a rename (Orbax) and metrics.jsonl drops a torn last line.

`train_and_evaluate` called from Python (no `install_for_command`) gets the
same stop request for its training phase through ordinary handlers; a second
Ctrl-C there raises `KeyboardInterrupt`, as Python does.

Standard library only: `train.py` imports it before JAX.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

SETUP, TRAINING, FINISHING = "setup", "training", "finishing"
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def command_line(argv: Sequence[str]) -> str:
  """The shell command that reruns `argv` (`python train.py ...`): the
  interpreter by the short name that finds it on PATH, else its full path."""
  executable = sys.executable or "python"
  for name in ("python", "python3", os.path.basename(executable)):
    found = shutil.which(name)
    if found and os.path.abspath(found) == os.path.abspath(executable):
      executable = name
      break
  return shlex.join([executable, *argv])


class Interrupts:
  """The interrupt state of one run: phase, stop request, last checkpoint.

  Attributes:
    requested_by: the name of the signal that asked to stop, or None.
  """

  def __init__(self, resume_hint: str, out: Callable[[str], None], hard_exit: bool):
    """
    Args:
      resume_hint: how to resume, for the messages (a command, or words).
      out: prints one message line at once (flushed).
      hard_exit: abort with `os._exit` (a command); else raise
        `KeyboardInterrupt` in the main thread (a library call).
    """
    self.resume_hint = resume_hint
    self._out = out
    self._hard_exit = hard_exit
    self.phase = SETUP
    self.requested_by: str | None = None
    self.last_saved: int | None = None
    self._previous_saved: int | None = None
    self.chunk_end: int | None = None
    self.saving: int | None = None  # The final checkpoint being written.
    self.after_training_hint = ""

  @property
  def stop_requested(self) -> bool:
    return self.requested_by is not None

  def handle(self, signum: int) -> None:
    """Acts on one signal according to the phase (see the module docstring)."""
    name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
    if self.phase == SETUP:
      kept = ("" if self.last_saved is None else
              f" The workdir still holds its checkpoint at step {self.last_saved}.")
      self._abort(signum, f"{name} before training started: stopped; nothing was saved."
                  f"{kept} Start it again with:\n  {self.resume_hint}")
    elif self.phase == FINISHING and self.stop_requested:
      self._abort(signum, f"{name}: stopped; the checkpoint at step {self.last_saved} is "
                  f"saved. Resume with:\n  {self.resume_hint}")
    elif self.phase == FINISHING:
      self._abort(signum, f"{name}: stopped. Training had finished and its final "
                  f"checkpoint is saved. {self.after_training_hint}".strip())
    elif not self.stop_requested:
      self.requested_by = name
      where = (f"the chunk that ends at step {self.chunk_end}" if self.chunk_end is not None
               else "the current chunk")
      abort = (" Press Ctrl-C again to stop at once without saving; that loses "
               f"{self._lost()}." if self._hard_exit or signum == signal.SIGINT else "")
      self._out(f"{name}: finishing {where}, then saving a checkpoint and exiting.{abort}")
    elif signum == signal.SIGINT:
      self._abort(signum, f"Second Ctrl-C: stopped at once without saving; lost: "
                  f"{self._lost()}. Resume with:\n  {self.resume_hint}")

  def _lost(self) -> str:
    if self.saving is not None:
      return (f"the checkpoint at step {self.saving} being written, and "
              + self._steps_after_last_saved(exclude=self.saving))
    return self._steps_after_last_saved()

  def _steps_after_last_saved(self, exclude: int | None = None) -> str:
    last = self.last_saved if self.last_saved != exclude else self._previous_saved
    if last is None:
      return "every step of this run, as there is no checkpoint yet"
    return f"the steps after step {last}, the last checkpoint"

  def note_saved(self, step: int) -> None:
    """A checkpoint of `step` was started (Orbax completes the previous one
    before it starts the next)."""
    self._previous_saved, self.last_saved = self.last_saved, step

  def _abort(self, signum: int, message: str) -> None:
    self._out(message)
    if self._hard_exit:
      os._exit(128 + signum)  # pylint: disable=protected-access
    raise KeyboardInterrupt(message)


_installed: Interrupts | None = None


def _print_now(message: str) -> None:
  try:
    sys.stdout.flush()
  except (OSError, ValueError):
    pass
  os.write(sys.stdout.fileno(), (message + "\n").encode())


def install_for_command(argv: Sequence[str]) -> Interrupts:
  """Handles SIGINT and SIGTERM for the rest of this process (call in the
  main thread, before anything slow); returns the shared state, which
  `during_training` then uses."""
  global _installed
  state = Interrupts(command_line(argv), out=_print_now, hard_exit=True)
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  for signum in _SIGNAL_NAMES:
    # A Python handler must be set for the wake-up byte to be written; the
    # watcher acts, so this one does nothing.
    signal.signal(signum, lambda *_: None)

  def watch():
    while True:
      data = os.read(read_end, 16)
      for signum in data:
        state.handle(signum)

  threading.Thread(target=watch, name="interrupts", daemon=True).start()
  _installed = state
  return state


def installed() -> Interrupts | None:
  """The state `install_for_command` set up, or None (a library call)."""
  return _installed


def note_restored(step: int | None) -> None:
  """The checkpoint a run resumed from (for the setup-phase message)."""
  if _installed is not None:
    _installed.last_saved = step


@contextlib.contextmanager
def handling(handler: Callable[[int], None]) -> Iterator[None]:
  """SIGINT and SIGTERM call `handler(signum)` for the duration, then the
  previous handlers are back. Outside the main thread Python cannot set
  handlers: nothing is installed there."""
  previous = {}
  try:
    for signum in _SIGNAL_NAMES:
      previous[signum] = signal.signal(signum, lambda signum, frame: handler(signum))
  except ValueError:  # Not the main thread.
    pass
  try:
    yield
  finally:
    for signum, old in previous.items():
      signal.signal(signum, old)


@contextlib.contextmanager
def during_training(log: Callable[[str], None], last_saved: int | None
                    ) -> Iterator[Interrupts]:
  """The training phase: interrupts ask to stop after the chunk.

  With `install_for_command` done, switches its phase (to "finishing" on
  exit); otherwise installs handlers for the duration (main thread only; in
  another thread there is no graceful stop).
  """
  state = installed()
  if state is not None:
    state.last_saved, state.phase = last_saved, TRAINING
    try:
      yield state
    finally:
      state.phase = FINISHING
    return
  state = Interrupts("call train_and_evaluate again with the same workdir", out=log,
                     hard_exit=False)
  state.last_saved, state.phase = last_saved, TRAINING
  with handling(state.handle):
    yield state


def stopped_message(state: Interrupts, step: int) -> str:
  """What the run prints after its stop checkpoint is committed."""
  return (f"{state.requested_by}: saved a checkpoint at step {step}; exiting. "
          f"Resume with:\n  {state.resume_hint}")
