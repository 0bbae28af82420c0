"""Train an early-stage ranker by policy gradient.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/synthetic.py:estimator=vpg,K=20 --workdir=runs/vpg_k20
  python train.py --config=configs/synthetic.py --config.num_seeds=3 --workdir=DIR

Every config field can be overridden with --config.<field>=<value>. Re-running
the same command with the same --workdir resumes from the latest checkpoint.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cpg_jax import checkpointing
from cpg_jax import config as config_lib
from cpg_jax import loop
from cpg_jax import report
from cpg_jax.environments import DataFileError

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/quickstart.py", "Experiment config file (configs/*.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PLOT = flags.DEFINE_bool("plot", True, "Draw the learning curves when training ends.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (where checkpoints and metrics go)")
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, DataFileError, loop.WorkdirError,
          checkpointing.IncompatibleCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if _PLOT.value:
    png = report.write_report([_WORKDIR.value])
    print(f"Learning curves: {png}")


if __name__ == "__main__":
  app.run(main)
