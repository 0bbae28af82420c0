"""KuaiRec small matrix (method.md §5.2, §6 experiment (d)).

  python train.py --config=configs/kuairec.py:estimator=ca_pg_swr,K=100 \
      --config.env.data_path=/path/to/small_matrix.csv --workdir=runs/kuai_ca_k100

The data file is the user's (KuaiRec's small_matrix.csv); nothing is
downloaded. watch_ratio is clipped to [0, 10], ids are re-indexed densely in
order of first appearance, observed reward r = q (1 + eps), eps ~ N(0, 0.3^2).
Learning rate 0.01 for every estimator. Protocol as the synthetic runs (10
seeds, 500,000 steps). Expected runtime: several hours per configuration on 2
CPU cores (3,327 items, K up to 200); not yet measured end to end. Expected result: CA-PG-SwR beats V-PG-SwR, more so at
K = 200.
"""

from cpg_jax.config import default_config, parse_config_arg


def get_config(arg: str = ""):
  values = parse_config_arg(
      arg, {"estimator": "ca_pg_swr", "K": "100", "L": "1"}, "configs/kuairec.py")
  c = default_config()
  c.env.name = "kuairec"
  c.env.data_path = ""
  c.estimator = values["estimator"]
  c.num_candidates = int(values["K"])
  c.num_outputs = int(values["L"])
  c.learning_rate = 0.01
  return c
