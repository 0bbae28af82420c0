"""The published experiments (docs/method.md, the protocol) as sweep definitions.

  python -m cpg_jax.experiments.sweep --experiment=a --root=runs/paper_a
  python -m cpg_jax.experiments.sweep --experiment=d --root=runs/paper_d \\
      -- --config.env.data_path=/data/small_matrix.csv
  python benchmarks/paper_runtime.py            # experiment (e)

Each training experiment (a)-(d) names a config file, its axes (the cartesian
product of the axes is the set of points; a *joint* axis varies several fields
together, e.g. (L, M) in {(1,1), (1,5), (5,1), (5,5)}), the fields held fixed
at every point, the learning rate of each estimator, and how its plot is
faceted. The rest of the protocol lives in the config files: 10 seeds,
500,000 steps, evaluation every 1,000 steps on 10,000 contexts, Adagrad.

Experiment (e), the time per 1,000 gradient steps, is not a training sweep:
`RUNTIME` holds its settings and `benchmarks/paper_runtime.py` measures them.

The learning-rate rule lives here and nowhere else
(`default_learning_rate`): the config files, the experiment table and the
sweep all ask it.

This module depends on nothing but the standard library, so that the sweep's
dry run and the documentation can list the experiments without importing JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

ESTIMATORS = ("vpg", "vpg_swr", "ca_pg", "ca_pg_swr")
# The paper's learning rates, per environment and estimator.
PAPER_LEARNING_RATES = {
    "synthetic": {"vpg": 0.1, "vpg_swr": 0.1, "ca_pg": 0.01, "ca_pg_swr": 0.01},
    "kuairec": {name: 0.01 for name in ESTIMATORS},
}
# The project's additions: MovieLens-100K takes the synthetic rule (at 0.01
# V-PG and V-PG-SwR barely move in 3,000 steps there; see configs/movielens.py).
LEARNING_RATES = {**PAPER_LEARNING_RATES, "movielens": PAPER_LEARNING_RATES["synthetic"]}


def default_learning_rate(estimator: str, environment: str = "synthetic") -> float | None:
  """The learning rate of `estimator` on `environment` (an `env.name`): the
  paper's where it has one (`PAPER_LEARNING_RATES`), the project's choice for
  MovieLens, None elsewhere (another environment or estimator)."""
  return LEARNING_RATES.get(environment, {}).get(estimator)


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of a sweep: one field, or several fields varied jointly.

  Attributes:
    fields: the config fields (dotted for nested ones, e.g. env.num_items).
    values: one tuple of values (strings, as on the command line) per point
      of the axis, each as long as `fields`.
  """
  fields: tuple[str, ...]
  values: tuple[tuple[str, ...], ...]

  def __post_init__(self):
    if not self.fields or not self.values:
      raise ValueError("an axis needs at least one field and one value")
    for value in self.values:
      if len(value) != len(self.fields):
        raise ValueError(
            f"axis {'+'.join(self.fields)}: value {'+'.join(value)} has {len(value)} "
            f"parts, expected {len(self.fields)} (one per field)")

  @classmethod
  def single(cls, field: str, values: Sequence[object]) -> "Axis":
    return cls((field,), tuple((str(v),) for v in values))

  @classmethod
  def joint(cls, fields: Sequence[str], values: Sequence[Sequence[object]]) -> "Axis":
    return cls(tuple(fields), tuple(tuple(str(v) for v in value) for value in values))

  @property
  def name(self) -> str:
    """`FIELD` or `FIELD+FIELD`, the form `--grid` takes."""
    return "+".join(self.fields)


@dataclasses.dataclass(frozen=True)
class PaperExperiment:
  """One training experiment of the paper, as a sweep.

  Attributes:
    name: "a", "b", "c" or "d".
    title: the figure title, naming what varies and what is held fixed.
    config: the config file, relative to the repository root.
    axes: the sweep axes; points are their cartesian product, first axis
      outermost, so the point order (and `--points` indices) is stable.
    fixed: (field, value) overrides applied at every point.
    environment: the `env.name` of its config, which picks the paper's
      learning rate of each estimator (`default_learning_rate`).
    facet: the config fields whose values get one subplot each.
    required: config fields that must be given as overrides after `--`
      (e.g. env.data_path for KuaiRec), with what they are.
  """
  name: str
  title: str
  config: str
  axes: tuple[Axis, ...]
  fixed: tuple[tuple[str, str], ...]
  environment: str
  facet: tuple[str, ...]
  required: tuple[tuple[str, str], ...] = ()


_ESTIMATOR_AXIS = Axis.single("estimator", ESTIMATORS)

EXPERIMENTS: dict[str, PaperExperiment] = {
    "a": PaperExperiment(
        name="a",
        title="(a) Synthetic, L = 1, M = 1, optimal LSR: number of candidates K",
        config="configs/synthetic.py",
        axes=(_ESTIMATOR_AXIS, Axis.single("num_candidates", (5, 10, 20))),
        fixed=(("num_outputs", "1"), ("num_models", "1"), ("lsr", "optimal")),
        environment="synthetic",
        facet=("num_candidates",)),
    "b": PaperExperiment(
        name="b",
        title="(b) Synthetic, K = 10, L = 1, M = 1: late-stage ranker (LSR)",
        config="configs/synthetic.py",
        axes=(_ESTIMATOR_AXIS,
              Axis.single("lsr", ("optimal", "noisy", "uniform", "anti"))),
        fixed=(("num_candidates", "10"), ("num_outputs", "1"), ("num_models", "1")),
        environment="synthetic",
        facet=("lsr",)),
    "c": PaperExperiment(
        name="c",
        title="(c) Synthetic, K = 10, optimal LSR: outputs L and early-stage models M",
        config="configs/synthetic.py",
        axes=(_ESTIMATOR_AXIS,
              Axis.joint(("num_outputs", "num_models"), ((1, 1), (1, 5), (5, 1), (5, 5)))),
        fixed=(("num_candidates", "10"), ("lsr", "optimal")),
        environment="synthetic",
        facet=("num_outputs", "num_models")),
    "d": PaperExperiment(
        name="d",
        title="(d) KuaiRec small matrix, L = 1, M = 1, optimal LSR: number of candidates K",
        config="configs/kuairec.py",
        axes=(Axis.single("estimator", ("vpg_swr", "ca_pg_swr")),
              Axis.single("num_candidates", (50, 100, 200))),
        fixed=(("num_outputs", "1"), ("num_models", "1"), ("lsr", "optimal")),
        environment="kuairec",
        facet=("num_candidates",),
        required=(("env.data_path", "the path of KuaiRec's small_matrix.csv"),)),
}


@dataclasses.dataclass(frozen=True)
class RuntimeExperiment:
  """Experiment (e): seconds per 1,000 gradient steps (not a training sweep).

  Attributes:
    settings: the (K, L) pairs; M = 1, the synthetic environment (N = 1,000
      items, batch 128, Adagrad).
    estimators: every estimator is timed at every setting.
    seeds: seed counts, each run as one vmapped program.
    command: the command that measures it.
  """
  name: str
  title: str
  settings: tuple[tuple[int, int], ...]
  estimators: tuple[str, ...]
  seeds: tuple[int, ...]
  command: str


RUNTIME = RuntimeExperiment(
    name="e",
    title="(e) Seconds per 1,000 gradient steps (synthetic, N = 1,000, batch 128, M = 1)",
    settings=((5, 1), (10, 1), (20, 1), (20, 5)),
    estimators=ESTIMATORS,
    seeds=(1, 10),
    command="python benchmarks/paper_runtime.py")


def get(name: str) -> PaperExperiment:
  """The training experiment `name`; ValueError naming the choices otherwise."""
  if name == RUNTIME.name:
    raise ValueError(
        f"experiment {name!r} measures runtime and is not a training sweep: run "
        f"`{RUNTIME.command}` (see docs/results.md)")
  if name not in EXPERIMENTS:
    raise ValueError(
        f"unknown experiment {name!r}; the training experiments are "
        f"{', '.join(EXPERIMENTS)} (and {RUNTIME.name}: `{RUNTIME.command}`)")
  return EXPERIMENTS[name]
