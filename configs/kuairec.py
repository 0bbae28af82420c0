"""KuaiRec small matrix (docs/method.md §5.2, §6 experiment (d)).

  python train.py --config=configs/kuairec.py:estimator=ca_pg_swr,K=100 \
      --config.env.data_path=/path/to/small_matrix.csv --workdir=runs/kuai_ca_k100

The data file is the user's (KuaiRec's small_matrix.csv); nothing is
downloaded. watch_ratio is clipped to [0, 10], ids are re-indexed densely in
order of first appearance, observed reward r = q (1 + eps), eps ~ N(0, 0.3^2).
Learning rate 0.01 for every estimator. Protocol as the synthetic runs (10
seeds, 500,000 steps). Expected runtime on the 2-core development CPU: a
one-seed step takes 2.6-2.8 ms at K = 10 and 12-16 ms at K = 200 (median,
`benchmarks/step.py --items 3327 --candidates K`, machine loaded), so the
protocol is most of a day per configuration there; use an accelerator.
`python train.py --config=configs/kuairec.py --config.env.data_path=FILE
--estimate_time` measures it on yours (a short timed run, nothing written).
Without the real file, `python -m cpg_jax.environments.kuairec_like --out F`
writes a generated file of the same format and shape (docs/results.md (d)).
Expected result (the paper's claim): CA-PG-SwR beats V-PG-SwR, more so at
K = 200.
"""

from cpg_jax.experiments.paper import default_learning_rate
from cpg_jax.training.config import default_config, parse_config_arg


def get_config(arg: str = ""):
  values = parse_config_arg(
      arg, {"estimator": "ca_pg_swr", "K": "100", "L": "1"}, "configs/kuairec.py")
  c = default_config()
  c.env.name = "kuairec"
  c.env.data_path = ""
  c.estimator = values["estimator"]
  c.num_candidates = int(values["K"])
  c.num_outputs = int(values["L"])
  c.learning_rate = default_learning_rate(c.estimator, c.env.name) or 0.01
  return c
