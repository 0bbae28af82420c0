"""The paper's synthetic experiments (docs/method.md §6), full protocol.

  python train.py --config=configs/synthetic.py --workdir=runs/syn_ca_k10
  python train.py --config=configs/synthetic.py:estimator=vpg,K=20,L=1,M=1,lsr=optimal \
      --workdir=runs/syn_vpg_k20

Arguments after the colon (all optional): estimator, K, L, M, lsr. The learning
rate follows the paper: 0.1 for vpg / vpg_swr, 0.01 for ca_pg / ca_pg_swr.
Protocol: 10 seeds, 500,000 steps, evaluation every 1,000 steps on 10,000
contexts, Adagrad. The environment uses the reference-compatible shared-key
draws (config.env.shared_key=True). Expected runtime on the 2-core
development CPU: about 1-1.5 hours per configuration at K = 10 with the
machine to itself (10 seeds x 500,000 steps at about 1,200 seed-steps/s,
benchmarks/train_throughput.py), longer for large K. With other jobs keeping
its load average at about 9, `python train.py --config=configs/synthetic.py
--estimate_time` measured 4 h 57 min (start-up 18 s, compiling 15 s, 33.6 ms
per step of the 10 seeds, 501 evaluations of 1.9 s), and 6 h 16 min for
estimator=vpg,K=20 (42.7 ms per step); run it to know your machine's.
Expected result: CA-PG and CA-PG-SwR reach 95% of the optimum in fewer steps
than V-PG, more so for large K.
"""

from cpg_jax.experiments.paper import default_learning_rate
from cpg_jax.training.config import default_config, parse_config_arg


def get_config(arg: str = ""):
  a = parse_config_arg(
      arg, {"estimator": "ca_pg_swr", "K": "10", "L": "1", "M": "1", "lsr": "optimal"},
      "configs/synthetic.py")
  c = default_config()
  c.estimator = a["estimator"]
  c.num_candidates = int(a["K"])
  c.num_outputs = int(a["L"])
  c.num_models = int(a["M"])
  c.lsr = a["lsr"]
  c.learning_rate = default_learning_rate(c.estimator, c.env.name) or 0.01
  return c
