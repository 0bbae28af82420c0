"""The command-line front end of `train.py`: flag parsing and error reporting.

Every mistake a user can make on the command line or in a data file ends in
one paragraph on stderr that names the input and what is allowed, and a
non-zero exit code (2), before anything is compiled or written.
"""

from __future__ import annotations

import re
import sys
import textwrap

from absl import flags

from cpg_jax import checkpointing
from cpg_jax import config as config_lib
from cpg_jax import loop
from cpg_jax import report
from cpg_jax.environments import DataFileError

# The errors a user can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (config_lib.ConfigError, DataFileError, loop.WorkdirError,
               checkpointing.IncompatibleCheckpointError,
               checkpointing.NoIntactCheckpointError)

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
  """Prints `error: message` as one wrapped paragraph and exits with 2."""
  text = " ".join(str(message).split())
  print(textwrap.fill(f"error: {text}", width=100), file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _config_override_args(argv) -> list[str]:
  return [a for a in argv[1:] if a.startswith("--config.")]


def describe_parse_error(error: Exception, argv) -> str:
  if isinstance(error, (KeyError, AttributeError)):
    name = str(error).strip("'\"")
    culprit = next((a for a in _config_override_args(argv)
                    if re.match(rf"--config\.(.*\.)?{re.escape(name)}(=|$)", a)), None)
    node, where = config_lib.default_config(), "Top-level fields"
    if culprit and culprit.count(".") > 1:
      parent = culprit.split("=")[0].split(".")[1:-1]
      for part in parent:
        node = node.get(part, node)
      where = f"Fields of config.{'.'.join(parent)}"
    fields = ", ".join(sorted(node.keys()))
    return (f"unknown config field {name!r}"
            + (f" in {culprit}" if culprit else "") + f". {where}: {fields}.")
  message = " ".join(str(error).split())
  if isinstance(error, config_lib.ConfigError) or "ConfigError: " in message:
    return message.split("ConfigError: ")[-1]
  if "Failed loading config file" in message or "No such file" in message:
    given = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
    return (f"could not load the config file of {given}: {message}. Pass an existing "
            "file, e.g. --config=configs/quickstart.py.")
  return f"bad command line: {message}"


def parse_flags(argv):
  """absl flags parser that turns every parse error into `fail(...)`."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags raises KeyError, OSError, flags.Error, ...
    fail(describe_parse_error(e, argv))


def run(config, workdir: str, plot: bool) -> int:
  """Trains (or resumes) and draws the curves; user errors end in `fail`."""
  try:
    loop.train_and_evaluate(config, workdir)
  except USER_ERRORS as e:
    fail(str(e))
  if plot:
    png = report.write_report([workdir])
    print(f"Learning curves: {png}")
  return 0
