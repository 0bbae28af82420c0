"""The command-line front end of `train.py`: flag parsing, messages, help.

Every mistake a user can make on the command line or in a data file ends in
one paragraph on stderr that names the input and what is allowed, and a
non-zero exit code (2), before anything is compiled or written
(`cpg_jax.user_errors`). An unknown `--config.FIELD` is named as typed, with
the close matches among the fields of the sub-config it addresses.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import textwrap
from typing import Any, Sequence

import ml_collections
from absl import flags

from cpg_jax import user_errors
from cpg_jax.training import config as config_lib

fail = user_errors.exit_with_error
# Names users type for a field, from the paper's notation and other tools.
FIELD_ALIASES = {"K": "num_candidates", "L": "num_outputs", "M": "num_models",
                 "lr": "learning_rate", "steps": "num_steps", "seeds": "num_seeds"}


def _config_override_args(argv) -> list[str]:
  return [a for a in argv[1:] if a.startswith("--config.")]


def _unknown_field(arg: str, config: ml_collections.ConfigDict) -> str | None:
  """The message for `--config.a.b=V` if its path leaves `config`'s fields."""
  path = arg[len("--config."):].split("=", 1)[0]
  node, walked = config, []
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"{arg}: config.{'.'.join(walked)} is a single value, not a group of "
              "fields; write --config." + ".".join(walked) + "=VALUE")
    if part not in node:
      return _unknown_field_message(arg, part, walked, sorted(node.keys()))
    node, walked = node[part], walked + [part]
  return None


def _unknown_field_message(arg: str, name: str, parent: list[str], fields: list[str]) -> str:
  prefix = "".join(f"{p}." for p in parent)
  alias = [FIELD_ALIASES[name]] if FIELD_ALIASES.get(name) in fields else []
  close = alias + [c for c in difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
                   if c not in alias]
  hint = (" Did you mean " + " or ".join(f"--config.{prefix}{c}" for c in close) + "?"
          if close else "")
  where = f"Fields of config.{'.'.join(parent)}" if parent else "Top-level fields"
  return (f"unknown config field '{prefix}{name}' in {arg}.{hint} {where}: "
          f"{', '.join(fields)}. Every field is documented in cpg_jax/training/config.py "
          "(python train.py --help lists where).")


def describe_parse_error(error: Exception, argv) -> str:
  """One paragraph for an error of absl/config_flags parsing `argv`."""
  cause = error.args[0] if isinstance(error, AttributeError) and error.args else error
  if isinstance(cause, (KeyError, AttributeError)):
    defaults = config_lib.default_config()
    for arg in _config_override_args(argv):
      message = _unknown_field(arg, defaults)
      if message:
        return message
    # The defaults have every overridden field (a config file added one):
    # name what config_flags could not find.
    text = str(cause.args[0] if cause.args else cause)
    name = text.split("\n")[0].strip("'\"")
    return (f"unknown config field '{name}' (not in the config file's fields). Every "
            "field is documented in cpg_jax/training/config.py; --print_config lists "
            "the file's.")
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
  from cpg_jax.training import distributed  # pylint: disable=g-import-not-at-top
  try:
    if cpu_devices is not None:
      distributed.set_cpu_devices(cpu_devices)
    distributed.initialize(coordinator_address, num_processes, process_id, auto_detect)
  except user_errors.UserError as e:
    fail(e)


def is_primary() -> bool:
  from cpg_jax.training import distributed  # pylint: disable=g-import-not-at-top
  return distributed.is_primary()
def _json_value(value: Any) -> Any:
  return json.loads(json.dumps(value))  # Tuples as lists, as in config.json.


def config_changes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields whose value differs from `default_config()`, in config order."""
  defaults = config_lib.flatten_config(config_lib.default_config())
  return {field: value for field, value in config_lib.flatten_config(config).items()
          if field not in defaults or _json_value(value) != _json_value(defaults[field])}


def _format_value(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, (list, tuple)) else repr(value)


def short_config(config: ml_collections.ConfigDict) -> str:
  """`field=value, ...` for the fields that differ from the defaults."""
  changes = config_changes(config)
  if not changes:
    return "the defaults (config.py default_config)"
  return ", ".join(f"{f}={_format_value(v)}" for f, v in changes.items())


def format_config(config: ml_collections.ConfigDict, source: str) -> str:
  """Every field of the resolved config, one `field = value` line each, with
  the default beside the fields that differ from it."""
  defaults = config_lib.flatten_config(config_lib.default_config())
  changed = config_changes(config)
  lines = [f"# The resolved config of {source}.",
           "# Fields that differ from the defaults end with their default; where each",
           "# field is documented: python train.py --help."]
  for field, value in config_lib.flatten_config(config).items():
    note = ""
    if field in changed:
      note = (f"  # default {_format_value(defaults[field])}" if field in defaults
              else "  # not a default field")
    lines.append(f"{field} = {_format_value(value)}{note}")
  return "\n".join(lines)


def print_to_pipe(text: str) -> None:
  """Prints `text`; a reader that stops early (`| head`) is not an error."""
  try:
    print(text, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def fields_help(width: int = 78) -> str:
  """Where every config field is documented (for --help)."""
  lines = ["Config fields (every one has its default in cpg_jax/training/config.py;",
           "override any with --config.FIELD=VALUE, see them all with --print_config):"]
  for topic, fields, where in config_lib.FIELD_DOCS:
    lines.extend(_wrap(f"{topic[0].upper()}{topic[1:]}: documented in {where}.", width,
                       "  ", "    "))
    lines.extend(_wrap(", ".join(fields), width, "      ", "      "))
  return "\n".join(lines)


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
  return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                       break_on_hyphens=False, break_long_words=False)


def run(config, workdir: str) -> None:
  """Trains (or resumes); user errors end in `fail`."""
  from cpg_jax.training import loop  # pylint: disable=g-import-not-at-top
  print(f"Config: {short_config(config)}", flush=True)
  try:
    loop.train_and_evaluate(config, workdir)
  except user_errors.UserError as e:
    fail(e)


def unexpected_arguments(argv: Sequence[str]) -> str:
  return (f"unexpected arguments: {' '.join(argv[1:])} (flags are --config, "
          "--config.<field>=<value>, --workdir, --[no]plot, --print_config, "
          "--estimate_time and the multi-process ones; --help lists them)")
