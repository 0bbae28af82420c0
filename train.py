"""Train an early-stage ranker by policy gradient.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/synthetic.py:estimator=vpg,K=20 --workdir=runs/vpg_k20
  python train.py --config=configs/synthetic.py --config.num_seeds=3 --workdir=DIR
  python train.py --config=configs/synthetic.py --print_config
  python train.py --config=configs/synthetic.py --estimate_time

Every config field can be overridden with --config.<field>=<value>. Re-running
the same command with the same --workdir resumes from the latest checkpoint.

All the devices of a host are used (config.mesh: seeds x items); several
hosts run one process each:

  python train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  srun python train.py ... --distributed      # SLURM / Open MPI / TPU pods
  python train.py ... --cpu_devices=4         # split this CPU into 4 devices

Ctrl-C (or SIGTERM) stops at the end of the current chunk with a checkpoint
and prints the command that resumes; a second Ctrl-C stops at once without
saving. The INFO logs of Orbax, JAX and absl are hidden; -v 0 shows them
(-v 1 adds DEBUG).
"""

import sys
import time

_STARTED = time.perf_counter()

# First, before the slow imports: Ctrl-C from here on exits cleanly.
from cpg_jax.training import interrupts  # pylint: disable=g-import-not-at-top,g-bad-import-order

_INTERRUPTS = interrupts.install_for_command(sys.argv)

from absl import app  # pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from cpg_jax.training import cli  # pylint: disable=g-import-not-at-top
from cpg_jax.training import logging_setup  # pylint: disable=g-import-not-at-top

__doc__ += "\n" + cli.fields_help() + "\n"  # --help prints the docstring.

try:  # config_flags applies --config.<field> overrides while defining the flag.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/quickstart.py",
      "Experiment config file (configs/*.py), optionally FILE:ARGS. Where every field "
      "is documented: see the list above.", lock_config=True)
except Exception as e:  # pylint: disable=broad-except
  cli.fail(cli.describe_parse_error(e, sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PLOT = flags.DEFINE_bool("plot", True, "Draw the learning curves when training ends.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every field of the resolved config and exit.")
_ESTIMATE_TIME = flags.DEFINE_bool(
    "estimate_time", False, "Measure this config's start-up, compile, step and evaluation "
    "times on this machine (a short run; nothing is written), print the estimated time "
    "of the whole run and exit.")
# Several processes (jax.distributed.initialize's own argument names).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start jax.distributed with JAX's cluster auto-detection "
    "(SLURM inside srun, Open MPI, Cloud TPU pods).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "Split the CPU into this many JAX devices (to try a mesh, or "
    "several processes, on one machine).")


def _resolved_config():
  try:
    config = _CONFIG.value
    config.keys()  # config_flags defers a failed load until the config is used.
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(cli.describe_parse_error(e, sys.argv))
  return config


def _estimate_time(config) -> None:
  from cpg_jax.training import timing  # pylint: disable=g-import-not-at-top
  from cpg_jax.user_errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    measured = timing.measure(config, _STARTED)
  except UserError as e:
    cli.fail(e)
  print(f"Estimated time of this run on this machine: {measured.summary()}.")
  print(timing.JSON_PREFIX + measured.to_json(), flush=True)


def main(argv):
  logging_setup.configure(show_library_info=bool(flags.FLAGS["verbosity"].present))
  if len(argv) > 1:
    cli.fail(cli.unexpected_arguments(argv))
  config = _resolved_config()
  if _PRINT_CONFIG.value:
    cli.print_to_pipe(cli.format_config(config, flags.FLAGS["config"].config_filename))
    return 0
  cli.start_devices(_CPU_DEVICES.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                    _PROCESS_ID.value, _DISTRIBUTED.value)
  if _ESTIMATE_TIME.value:
    _estimate_time(config)
    return 0
  if not _WORKDIR.value:
    cli.fail("--workdir is required: the directory for checkpoints, metrics and plots.")
  _INTERRUPTS.after_training_hint = (
      f"Draw the learning curves with: python -m cpg_jax.experiments.report {_WORKDIR.value}")
  cli.run(config, _WORKDIR.value)
  if _PLOT.value and not _INTERRUPTS.stop_requested and cli.is_primary():  # A stop ends with how to resume.
    from cpg_jax.experiments import report  # pylint: disable=g-import-not-at-top
    print(f"Learning curves: {report.write_report([_WORKDIR.value])}")
  return 0


if __name__ == "__main__":
  sys.stdout.reconfigure(line_buffering=True)  # Lines appear at once in a pipe or a log.
  app.run(main, flags_parser=cli.parse_flags)
