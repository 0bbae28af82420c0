"""The one path by which a mistake a user can fix leaves a command.

Every error a user can cause (a bad config value, a missing or malformed data
file, an unusable workdir, a checkpoint from another config, a bad sweep or
report argument) is a `UserError`. The commands (`train.py`,
`python -m cpg_jax.experiments.sweep`, `python -m cpg_jax.experiments.report`)
print it as one line `error: ...` on stderr and exit with
`EXIT_USER_ERROR`; anything else is a bug and keeps its traceback.

Standard library only: the file-reading tools import it without JAX.
"""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
  """A mistake the user can fix; the message names the input and what is allowed."""


def format_error(message: object) -> str:
  """`error: message` on one line (runs of whitespace collapsed)."""
  return "error: " + " ".join(str(message).split())


def exit_with_error(message: object) -> NoReturn:
  """Prints `message` as an error line on stderr and exits with 2."""
  print(format_error(message), file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)
