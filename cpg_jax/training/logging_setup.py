"""What `train.py` shows on the console: our lines, not the libraries' INFO logs.

Orbax logs about 45 INFO lines per checkpoint through absl's Python logger,
and JAX logs "Unable to initialize backend 'tpu'" at INFO; absl sets the root
logger to INFO once the flags are parsed, so all of it reaches the console.
`configure` hides INFO and DEBUG records of those libraries (the `jax`,
`orbax` and `absl` loggers at WARNING, and a filter on absl's logger and
handler that drops records below WARNING coming from a library's files, since
Orbax calls `absl.logging.info`); warnings and errors still show.
`configure(show_library_info=True)` (train.py's `-v 0`/`--verbosity=0`, or
`-v 1` for DEBUG) leaves them alone.

The project's own loggers (`cpg_jax.*`, e.g. the MovieLens fit report at
INFO) print plain lines on stdout, like the progress lines.

Standard library only.
"""

from __future__ import annotations

import logging
import os
import sys

# Loggers whose INFO records are noise for a user of train.py.
QUIET_LOGGERS = ("jax", "jaxlib", "orbax", "absl", "flax", "optax", "tensorstore")
# Path fragments of the files whose records absl's logger carries for a library.
_LIBRARY_PATHS = tuple(f"{os.sep}{name}{os.sep}" for name in
                       ("orbax", "jax", "jaxlib", "flax", "optax", "etils", "tensorstore"))
PROJECT_LOGGER = "cpg_jax"


class LibraryInfoFilter(logging.Filter):
  """Drops records below WARNING that a library's file emitted (absl's logger
  carries Orbax's records; their `pathname` is the Orbax file)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(part in record.pathname for part in _LIBRARY_PATHS)


class _ProjectFormatter(logging.Formatter):
  """`message` for INFO, `WARNING: message` from WARNING up."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:
      return f"{record.levelname}: {message}"
    return message


def _project_handler(stream) -> logging.Handler:
  handler = logging.StreamHandler(stream)
  handler.setFormatter(_ProjectFormatter())
  handler.set_name("cpg_jax.console")
  return handler


def configure(show_library_info: bool = False, stream=None) -> None:
  """Sets up the console of a command (idempotent).

  Args:
    show_library_info: keep the INFO logs of Orbax, JAX and absl (the
      levels absl's `--verbosity` set are then left as they are).
    stream: where the project's log lines go (default: `sys.stdout` at the
      time of the call).
  """
  project = logging.getLogger(PROJECT_LOGGER)
  for handler in [h for h in project.handlers if h.get_name() == "cpg_jax.console"]:
    project.removeHandler(handler)
  project.addHandler(_project_handler(stream or sys.stdout))
  project.setLevel(logging.INFO)
  project.propagate = False  # Not again through absl's handler, in its format.
  if show_library_info:
    return
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  quiet = LibraryInfoFilter()
  absl_logger = logging.getLogger("absl")
  targets = [absl_logger, *absl_logger.handlers, *logging.getLogger().handlers]
  for target in targets:
    if not any(isinstance(f, LibraryInfoFilter) for f in target.filters):
      target.addFilter(quiet)
