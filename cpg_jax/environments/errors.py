"""Errors a user can cause when handing the environments a data file."""

from __future__ import annotations

import os

from cpg_jax.user_errors import UserError


class DataFileError(UserError, ValueError):
  """A data file is missing or malformed.

  The message always names the file and says what is wrong with it (and, for a
  bad value, on which line), so that it can be shown to the user as is.

  Attributes:
    path: the offending file, as given by the caller.
  """

  def __init__(self, path: str | os.PathLike[str], problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f'{self.path}: {problem}')
