"""MovieLens-100K, its rating matrix completed into expected rewards.

  pip install --no-deps recbole==1.2.1    # the data only (about 2 MB of it)
  python train.py --config=configs/movielens.py:estimator=ca_pg_swr,K=50 --workdir=runs/ml_ca_k50

Arguments after the colon (all optional): estimator, K, L. The data file is
the one the recbole wheel installs (recbole/dataset_example/ml-100k/
ml-100k.inter, found without importing RecBole); --config.env.data_path=FILE
takes MovieLens's own u.data or any RecBole .inter file instead. 943 users x
1,682 movies; the 6.3% of pairs that are rated are completed by biased ALS
(rank 5, l2 10, 20 sweeps: config.env.fit_*), clipped to [1, 5] stars;
observed reward r = q (1 + eps), eps ~ N(0, 0.3^2) (environments/movielens.py).
The fit's held-out error is printed at the start: RMSE 0.917, MAE 0.724 on
10% of the ratings (predicting the mean: 1.145). The completed matrix is cached
in ~/.cache/cpg_jax (config.env.cache_dir): the first run parses and fits it
in about 3 s, later runs load it in about 0.02 s.

Learning rate: the synthetic setting's rule, 0.1 for vpg / vpg_swr and 0.01
for the CA family (cpg_jax/experiments/paper.py, `default_learning_rate`): at
0.01 for all (the paper's KuaiRec choice) V-PG and V-PG-SwR barely move in
3,000 steps. Protocol: 3 seeds, 100,000 steps, evaluation every 1,000 steps on
10,000 users drawn uniformly, Adagrad. The K sweep, one resumable workdir per
point (the sweep passes each estimator's learning rate; K outermost, so that
the K = 20 panel is complete first):

  python -m cpg_jax.experiments.sweep --config=configs/movielens.py --root=runs/movielens \
      --grid=num_candidates=20,50,100 --grid=estimator=vpg,vpg_swr,ca_pg,ca_pg_swr

Expected runtime, measured on the 2-core development CPU (one core per run,
taskset -c 0, while other runs kept the load at 5-9; 3 seeds vmapped, 3,000
steps each): milliseconds per step of all 3 seeds

              K = 20   K = 50   K = 100
  vpg           14       29       30
  vpg_swr       15       18       24
  ca_pg         18       37       71
  ca_pg_swr     12       18       30

plus about 15-40 s of compilation and 1-4 s per evaluation, so 100,000 steps
take about 20-35 minutes at K = 20, 30-60 at K = 50 and 45-110 at K = 100
(ca_pg the slowest), about 9 hours for the whole 12-point sweep on one core.
`python train.py --config=configs/movielens.py --estimate_time` (this config,
ca_pg_swr at K = 50, both cores, load average about 9) measured 38 minutes:
start-up 9 s, compiling 13 s, 20.5 ms per step, 101 evaluations of 2.0 s; the
sweep's --dry_run adds such estimates up over its points.
Results of the sweep: docs/results.md, "MovieLens-100K".
Expected result (L = 1, optimal LSR; the optimum, printed at the start, is
4.631 at every K): the value at step 0 is 4.12 / 4.28 / 4.38 for K = 20 / 50 /
100 (the best of K random movies); after 3,000 steps CA-PG and CA-PG-SwR
reach 4.46 / 4.52 / 4.54 while V-PG and V-PG-SwR are still at 4.12-4.13 /
4.27-4.28 / 4.36-4.37 (at learning rate 0.1, V-PG reaches 4.25 at K = 20).
"""

from cpg_jax.experiments.paper import default_learning_rate
from cpg_jax.training.config import default_config, parse_config_arg


def get_config(arg: str = ""):
  values = parse_config_arg(
      arg, {"estimator": "ca_pg_swr", "K": "50", "L": "1"}, "configs/movielens.py")
  c = default_config()
  c.env.name = "movielens"
  c.env.data_path = ""  # "": the file installed by `pip install --no-deps recbole==1.2.1`.
  c.estimator = values["estimator"]
  c.num_candidates = int(values["K"])
  c.num_outputs = int(values["L"])
  c.learning_rate = default_learning_rate(c.estimator, c.env.name) or 0.01
  c.num_seeds = 3
  c.num_steps = 100_000
  return c
