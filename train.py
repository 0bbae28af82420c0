"""Train an early-stage ranker by policy gradient.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/synthetic.py:estimator=vpg,K=20 --workdir=runs/vpg_k20
  python train.py --config=configs/synthetic.py --config.num_seeds=3 --workdir=DIR

Every config field can be overridden with --config.<field>=<value>. Re-running
the same command with the same --workdir resumes from the latest checkpoint.

All the devices of a host are used (config.mesh: seeds x items); several
hosts run one process each:

  python train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  srun python train.py ... --distributed      # SLURM / Open MPI / TPU pods
  python train.py ... --cpu_devices=4         # split this CPU into 4 devices
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cpg_jax.experiments import report
from cpg_jax.training import cli

try:  # config_flags applies --config.<field> overrides while defining the flag.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", "configs/quickstart.py", "Experiment config file (configs/*.py).",
      lock_config=True)
except Exception as e:  # pylint: disable=broad-except
  cli.fail(cli.describe_parse_error(e, sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PLOT = flags.DEFINE_bool("plot", True, "Draw the learning curves when training ends.")
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


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --config, "
             "--config.<field>=<value>, --workdir, --[no]plot and the multi-process "
             "ones; see --help)")
  if not _WORKDIR.value:
    cli.fail("--workdir is required: the directory for checkpoints, metrics and plots.")
  try:
    config = _CONFIG.value
    config.keys()  # config_flags defers a failed load until the config is used.
  except Exception as e:  # pylint: disable=broad-except
    cli.fail(cli.describe_parse_error(e, sys.argv))
  cli.start_devices(_CPU_DEVICES.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                    _PROCESS_ID.value, _DISTRIBUTED.value)
  cli.run(config, _WORKDIR.value)
  if _PLOT.value and cli.is_primary():
    print(f"Learning curves: {report.write_report([_WORKDIR.value])}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
