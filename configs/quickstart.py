"""Quickstart: a short synthetic run, CA-PG-SwR, 3 seeds (the README's main job).

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart

The paper's synthetic environment (1,000 contexts, 1,000 items, K = 10, L = 1,
optimal LSR), 3 seeds vmapped in one program, 20,000 steps. Expected runtime:
about 50-75 seconds on 2 CPU cores after installation. Expected result (measured
on that machine): the mean policy value climbs from about 5.7 at step 0 to
about 7.65 at step 20,000, 83% of the optimum (9.16, printed at the start);
learning curves are written to <workdir>/curves.png.
"""

from cpg_jax.training.config import default_config


def get_config():
  c = default_config()
  c.estimator = "ca_pg_swr"
  c.learning_rate = 0.01
  c.num_seeds = 3
  c.num_steps = 20_000
  c.eval_every = 1000
  c.eval_contexts = 2000
  c.log_every = 1000
  c.checkpoint_every = 5000
  return c
