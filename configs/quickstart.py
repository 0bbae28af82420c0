"""Quickstart: a short synthetic run, CA-PG-SwR, 3 seeds (the README's main job).

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart

The paper's synthetic environment (1,000 contexts, 1,000 items, K = 10, L = 1,
optimal LSR), 3 seeds vmapped in one program, 20,000 steps. Expected runtime,
measured by `python benchmarks/first_hour.py` on the 2-core development CPU
(AMD EPYC) while other jobs kept its load average at about 9: 3 min 13 s
(training about 2 min 35 s at 100-175 steps/s, the rest start-up and
compilation), after an install of 66 s; an idle machine is faster, and
`python train.py --config=configs/quickstart.py --estimate_time` measures
yours. Expected result (measured on that machine): the mean policy value
climbs from about 5.7 at step 0 to about 7.65 at step 20,000 (7.645), 83% of
the optimum (9.16, printed at the start); learning curves are written to
<workdir>/curves.png.
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
