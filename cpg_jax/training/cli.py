"""The command-line front end of `train.py`: flag parsing and error reporting.

Every mistake a user can make on the command line or in a data file ends in
one paragraph on stderr that names the input and what is allowed, and a
non-zero exit code (2), before anything is compiled or written
(`cpg_jax.user_errors`).
"""

from __future__ import annotations

import re

from absl import flags

from cpg_jax import user_errors
from cpg_jax.training import config as config_lib
from cpg_jax.training import distributed
from cpg_jax.training import loop

fail = user_errors.exit_with_error


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


def start_devices(cpu_devices: int | None, coordinator_address: str | None,
                  num_processes: int | None, process_id: int | None,
                  auto_detect: bool) -> None:
  """Splits the CPU into devices and starts `jax.distributed` when asked;
  before anything else touches the devices. User errors end in `fail`."""
  try:
    if cpu_devices is not None:
      distributed.set_cpu_devices(cpu_devices)
    distributed.initialize(coordinator_address, num_processes, process_id, auto_detect)
  except user_errors.UserError as e:
    fail(e)


def is_primary() -> bool:
  return distributed.is_primary()


def run(config, workdir: str) -> None:
  """Trains (or resumes); user errors end in `fail`."""
  try:
    loop.train_and_evaluate(config, workdir)
  except user_errors.UserError as e:
    fail(e)
