"""Tests of cpg_jax.environments (docs/method.md §5).

Numerical references are computed in NumPy float64 from the environment's own
base arrays (x, e, M0, Mz, c_x, c_a, W), with the formula written out literally,
so they also check the precomputed per-context tables.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpg_jax.environments import DataFileError
from cpg_jax.environments import Environment
from cpg_jax.environments import load_dense_matrix
from cpg_jax.environments import load_kuairec_matrix
from cpg_jax.environments import make_kuairec_environment
from cpg_jax.environments import make_reward_matrix_environment
from cpg_jax.environments import make_synthetic_environment
from cpg_jax.environments import RewardMatrixEnvironment
from cpg_jax.environments import SyntheticEnvironment
from cpg_jax.environments import draw_components

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
KUAIREC_FIXTURE = os.path.join(FIXTURES, 'kuairec_small_matrix.csv')


# --------------------------------------------------------------- helpers --


def _np(a) -> np.ndarray:
  return np.asarray(a, dtype=np.float64)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _softplus(z):
  return np.logaddexp(0.0, z)


def _draws(env):
  """The generator's components behind a synthetic environment."""
  return draw_components(env.seed, env.num_contexts, env.num_items, env.dim,
                         env.shared_key)


def _reference_q(env, context_ids, item_ids):
  """q(x, a) = s x^T [(1 - eta) M0 + eta Mz] e_a, literally, in float64.

  context_ids: `[batch]`, item_ids: `[batch, n]` -> `[batch, n]`.
  """
  x = _np(_draws(env).context_vectors)[np.asarray(context_ids)]  # [b, d]
  e = _np(_draws(env).item_vectors)[np.asarray(item_ids)]  # [b, n, d]
  m0, mz = _np(_draws(env).m0), _np(_draws(env).mz)
  eta = np.sqrt(_sigmoid(x @ _np(_draws(env).c_x) + 3.0)[:, None]
                * _sigmoid(e @ _np(_draws(env).c_a) + 3.0))  # [b, n]
  m = (1.0 - eta)[..., None, None] * m0 + eta[..., None, None] * mz
  return env.reward_scale * np.einsum('bi,bnij,bnj->bn', x, m, e)


def _reference_std(env, context_ids, item_ids):
  x = _np(_draws(env).context_vectors)[np.asarray(context_ids)]
  e = _np(_draws(env).item_vectors)[np.asarray(item_ids)]
  return _sigmoid(np.einsum('bi,ij,bnj->bn', x, _np(_draws(env).w), e) + 1.0)


def _all_outvar_shapes(jaxpr):
  """Shapes of every intermediate value of a jaxpr, sub-jaxprs included."""
  shapes = []
  for eqn in jaxpr.eqns:
    shapes += [tuple(v.aval.shape) for v in eqn.outvars]
    for param in eqn.params.values():
      subs = param if isinstance(param, (list, tuple)) else [param]
      for sub in subs:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          shapes += _all_outvar_shapes(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          shapes += _all_outvar_shapes(sub)
  return shapes


@pytest.fixture(scope='module')
def env():
  return make_synthetic_environment(0)


@pytest.fixture(scope='module')
def env_independent():
  return make_synthetic_environment(0, shared_key=False)


# ------------------------------------------------------------- synthetic --


def test_synthetic_is_an_environment_pytree(env):
  assert isinstance(env, Environment)
  assert isinstance(env, SyntheticEnvironment)
  assert (env.num_contexts, env.num_items, env.dim) == (1000, 1000, 10)
  assert env.shared_key is True
  leaves = jax.tree_util.tree_leaves(env)
  assert len(leaves) == 6
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)
  # A jitted function takes the environment as an argument.
  ids = jax.jit(lambda e, k: e.sample_contexts(k, 512))(env, jax.random.key(1))
  assert ids.shape == (512,) and ids.dtype == jnp.int32
  assert 0 <= int(ids.min()) and int(ids.max()) < 1000
  assert len(np.unique(np.asarray(ids))) > 300


@pytest.mark.parametrize('shared_key', [True, False])
def test_synthetic_unit_rows(shared_key):
  e = make_synthetic_environment(3, num_contexts=200, num_items=300,
                                 shared_key=shared_key)
  for name in ('context_vectors', 'item_vectors', 'm0', 'mz'):
    norms = np.linalg.norm(_np(getattr(_draws(e), name)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6, err_msg=name)
  # U[-1, 1] before normalisation: coordinates of both signs, |.| <= 1.
  assert _np(_draws(e).context_vectors).min() < -0.5 < 0.5 < _np(_draws(e).item_vectors).max()


def test_synthetic_shared_key_equalities(env):
  assert np.array_equal(_draws(env).context_vectors, _draws(env).item_vectors)
  assert np.array_equal(_draws(env).mz, _draws(env).m0)
  assert np.array_equal(_draws(env).c_x, _draws(env).c_a)
  assert np.array_equal(env.context_mz, env.context_m0)
  assert not np.allclose(_draws(env).w, _draws(env).m0)
  assert not np.allclose(_draws(env).context_vectors[1:], _draws(env).context_vectors[:-1])


def test_synthetic_independent_keys(env, env_independent):
  e = env_independent
  assert e.shared_key is False
  for a, b in [('context_vectors', 'item_vectors'), ('m0', 'mz'),
               ('c_x', 'c_a'), ('w', 'm0'), ('w', 'mz')]:
    diff = np.abs(_np(getattr(_draws(e), a)) - _np(getattr(_draws(e), b)))
    assert diff.min() > 0 or diff.mean() > 0.1, (a, b)
    assert not np.allclose(getattr(_draws(e), a), getattr(_draws(e), b)), (a, b)
  # Deterministic given the seed; a new seed changes everything.
  again = make_synthetic_environment(0, shared_key=False)
  for x, y in zip(jax.tree_util.tree_leaves(e), jax.tree_util.tree_leaves(again)):
    assert np.array_equal(x, y)
  other = make_synthetic_environment(1, shared_key=False)
  assert not np.allclose(_draws(other).context_vectors, _draws(e).context_vectors)


@pytest.mark.parametrize('shared_key', [True, False])
def test_synthetic_q_reward_match_bruteforce(shared_key, env, env_independent):
  e = env if shared_key else env_independent
  rng = np.random.default_rng(0)
  ctx = rng.integers(0, 1000, 32)
  items = rng.integers(0, 1000, (32, 64))
  q = _np(e.expected_score(jnp.asarray(ctx), jnp.asarray(items)))
  q_ref = _reference_q(e, ctx, items)
  assert np.abs(q_ref).max() > 5  # a meaningful range
  np.testing.assert_allclose(q, q_ref, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(
      _np(e.mean_reward(jnp.asarray(ctx), jnp.asarray(items))),
      _softplus(q_ref) + 1.0, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(
      _np(e.reward_std(jnp.asarray(ctx), jnp.asarray(items))),
      _reference_std(e, ctx, items), rtol=1e-5, atol=1e-6)
  # The dense form agrees with the pairwise one.
  dense = _np(e.expected_score_all(jnp.asarray(ctx)))
  np.testing.assert_allclose(np.take_along_axis(dense, items, 1), q,
                             rtol=1e-6, atol=1e-5)
  if not shared_key:  # the latent term matters only when Mz != M0
    assert not np.allclose(_np(e.context_mz), _np(e.context_m0))


@pytest.mark.parametrize('shared_key', [True, False])
def test_synthetic_mean_reward_above_one(shared_key, env, env_independent):
  e = env if shared_key else env_independent
  ctx = jnp.arange(1000)
  items = jnp.broadcast_to(jnp.arange(1000), (1000, 1000))
  mean = _np(e.mean_reward(ctx, items))
  assert (mean > 1.0).all() and (mean > 0).all()
  q64 = _reference_q(e, np.arange(1000)[:100], np.asarray(items[:100]))
  assert (_softplus(q64) + 1.0 > 1.0).all()


def test_synthetic_reward_monte_carlo(env_independent):
  e = env_independent
  n = 40_000
  ctx = jnp.array([0, 1, 2, 500, 998, 999])
  items = jnp.array([3, 999, 2, 17, 0, 640])
  item_ids = jnp.broadcast_to(items[:, None], (6, n))
  r = _np(e.sample_reward(jax.random.key(42), ctx, item_ids))
  mu = _softplus(_reference_q(e, ctx, items[:, None]))[:, 0] + 1.0
  sd = _reference_std(e, ctx, items[:, None])[:, 0]
  assert len(np.unique(np.round(mu, 3))) == 6  # distinct pairs
  # 5 standard errors (mean: sd / sqrt(n); std of a normal: sd / sqrt(2n)).
  np.testing.assert_array_less(np.abs(r.mean(1) - mu), 5 * sd / np.sqrt(n))
  np.testing.assert_array_less(np.abs(r.std(1) - sd), 5 * sd / np.sqrt(2 * n))
  # Fresh key, fresh draws; draws are independent across pairs.
  r2 = _np(e.sample_reward(jax.random.key(43), ctx, item_ids))
  assert not np.allclose(r, r2)
  z = (r - mu[:, None]) / sd[:, None]
  assert abs(np.corrcoef(z[0], z[1])[0, 1]) < 5 / np.sqrt(n)


def test_synthetic_optimal_items(env):
  ctx = jnp.arange(0, 1000, 5)  # 200 contexts
  k = 10
  ids = np.asarray(env.optimal_items(ctx, k))
  assert ids.shape == (200, k) and ids.dtype == np.int32
  dense32 = np.asarray(env.expected_score_all(ctx))
  np.testing.assert_array_equal(ids, np.argsort(-dense32, axis=1,
                                                kind='stable')[:, :k])
  # Against the float64 reference: the chosen items' q are the top-k values.
  all_items = np.broadcast_to(np.arange(1000), (200, 1000))
  q64 = _reference_q(env, np.asarray(ctx), all_items)
  np.testing.assert_allclose(np.take_along_axis(q64, ids.astype(np.int64), 1),
                             -np.sort(-q64, axis=1)[:, :k], atol=1e-4)
  # The optimum beats random items by a wide margin.
  best = _np(env.mean_reward(ctx, jnp.asarray(ids)))
  rand = _np(env.mean_reward(
      ctx, jax.random.randint(jax.random.key(0), (200, k), 0, 1000)))
  assert (best.mean(1) > _softplus(q64).mean(1) + 1.0).all()
  assert best.mean() > rand.mean() + 3.0


@pytest.mark.parametrize(
    'num_items, block_size, k',
    [(5003, 512, 10),  # several blocks, a ragged last one
     (1000, 7, 10),  # k > block_size
     (1000, 5000, 10),  # one block bigger than the catalogue
     (37, 8, 37)])  # k == num_items
def test_synthetic_blocked_equals_dense(num_items, block_size, k):
  dense_env = make_synthetic_environment(
      5, num_contexts=50, num_items=num_items, shared_key=False)
  blocked_env = dense_env.replace(dense_budget_bytes=0, block_size=block_size)
  ctx = jnp.array([0, 7, 13, 49])
  dense = np.asarray(dense_env.optimal_items(ctx, k))
  blocked = np.asarray(blocked_env.optimal_items(ctx, k))
  np.testing.assert_array_equal(blocked, dense)
  jitted = jax.jit(lambda e, c: e.optimal_items(c, k))(blocked_env, ctx)
  np.testing.assert_array_equal(np.asarray(jitted), dense)
  # No intermediate of the blocked path spans the catalogue.
  jaxpr = jax.make_jaxpr(lambda e, c: e.optimal_items(c, k))(blocked_env, ctx)
  if num_items > block_size and k < num_items:
    for shape in _all_outvar_shapes(jaxpr.jaxpr):
      assert num_items not in shape, shape


def test_synthetic_million_items_blocked():
  t0 = time.perf_counter()
  big = make_synthetic_environment(
      7, num_contexts=100, num_items=1_000_000, dense_budget_bytes=2**20)
  ctx = jnp.array([0, 1, 50, 99])
  ids = np.asarray(big.optimal_items(ctx, 10))
  elapsed = time.perf_counter() - t0
  assert ids.shape == (4, 10)
  assert len(np.unique(ids[0])) == 10 and ids.max() < 1_000_000
  # The blocked path never materialises a [batch, items] (or [items]) array.
  jaxpr = jax.make_jaxpr(lambda e, c: e.optimal_items(c, 10))(big, ctx)
  shapes = _all_outvar_shapes(jaxpr.jaxpr)
  assert all(1_000_000 not in s for s in shapes)
  # The largest is one block of the item table, [block_size, dim].
  assert max(int(np.prod(s)) for s in shapes) <= big.block_size * big.dim
  with pytest.raises(ValueError, match='dense_budget_bytes'):
    big.expected_score_all(ctx)
  # Same answer as the dense path (16 MB, allowed with a larger budget).
  dense = big.replace(dense_budget_bytes=2**30)
  np.testing.assert_array_equal(ids, np.asarray(dense.optimal_items(ctx, 10)))
  q = _reference_q(big, np.asarray(ctx), ids.astype(np.int64))
  assert (np.diff(q, axis=1) <= 1e-5).all()  # best first
  assert elapsed < 20, elapsed


@pytest.mark.parametrize(
    'kwargs, name',
    [(dict(seed=-1), 'seed'), (dict(seed=1.5), 'seed'),
     (dict(num_contexts=0), 'num_contexts'),
     (dict(num_items=-3), 'num_items'), (dict(num_items=2**31), 'num_items'),
     (dict(num_items=True), 'num_items'),
     (dict(context_dim=0), 'context_dim'),
     (dict(item_dim=5), 'item_dim must equal context_dim'),
     (dict(reward_scale=0.0), 'reward_scale'),
     (dict(reward_scale=float('nan')), 'reward_scale'),
     (dict(shared_key='yes'), 'shared_key'),
     (dict(block_size=0), 'block_size'),
     (dict(dense_budget_bytes=-1), 'dense_budget_bytes')])
def test_synthetic_invalid_arguments(kwargs, name):
  kwargs = dict(dict(seed=0, num_contexts=10, num_items=10), **kwargs)
  with pytest.raises(ValueError, match=name):
    make_synthetic_environment(**kwargs)


def test_synthetic_invalid_k_and_budget(env):
  ctx = jnp.arange(4)
  for k in (0, 1001, 2.0):
    with pytest.raises(ValueError, match='k must'):
      env.optimal_items(ctx, k)
  small = env.replace(dense_budget_bytes=4 * 1000 * 4 - 1)
  with pytest.raises(ValueError, match='dense_budget_bytes'):
    small.expected_score_all(ctx)
  assert small.expected_score_all(ctx[:3]).shape == (3, 1000)
  with pytest.raises(AssertionError):  # shape check at entry
    env.expected_score(ctx, jnp.arange(4))


# --------------------------------------------------------- reward matrix --


def _reference_kuairec(path, clip_max=10.0):
  """Slow, obvious pivot with the csv module: first appearance, keep last."""
  users, items, values = {}, {}, {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      u, v = int(row['user_id']), int(row['video_id'])
      users.setdefault(u, len(users))
      items.setdefault(v, len(items))
      values[(u, v)] = min(max(float(row['watch_ratio']), 0.0), clip_max)
  q = np.zeros((len(users), len(items)))
  for (u, v), r in values.items():
    q[users[u], items[v]] = r
  return q, list(users), list(items), values


def _write(path, text):
  with open(path, 'w', newline='') as f:
    f.write(text)
  return str(path)


def test_kuairec_fixture_is_reproducible():
  spec = importlib.util.spec_from_file_location(
      'make_kuairec_fixture', os.path.join(FIXTURES, 'make_kuairec_fixture.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with open(KUAIREC_FIXTURE, newline='') as f:
    assert module.generate() == f.read()
  assert os.path.getsize(KUAIREC_FIXTURE) < 100_000


def test_kuairec_fixture_loads(caplog):
  with caplog.at_level(logging.INFO, logger='cpg_jax.environments'):
    q, user_ids, item_ids = load_kuairec_matrix(KUAIREC_FIXTURE)
  assert '2 duplicated (user, video) lines' in caplog.text
  ref, ref_users, ref_items, values = _reference_kuairec(KUAIREC_FIXTURE)
  assert q.shape == (30, 40) and q.dtype == np.float32
  assert user_ids.dtype == np.int64 and item_ids.dtype == np.int64
  np.testing.assert_array_equal(user_ids, ref_users)
  np.testing.assert_array_equal(item_ids, ref_items)
  # First appearance, not sorted order; ids not contiguous.
  assert list(user_ids) != sorted(user_ids)
  assert user_ids.max() - user_ids.min() > 30
  np.testing.assert_allclose(q, ref, rtol=1e-6)
  # Clipping to [0, 10] mattered.
  assert q.min() >= 0.0 and q.max() == np.float32(10.0)
  raw_max = max(float(r['watch_ratio'])
                for r in csv.DictReader(open(KUAIREC_FIXTURE, newline='')))
  assert raw_max > 10.0
  # Missing pairs are 0, about 10% of the matrix.
  observed = np.zeros_like(q, dtype=bool)
  for u, v in values:
    observed[ref_users.index(u), ref_items.index(v)] = True
  assert (q[~observed] == 0).all() and 0.05 < (~observed).mean() < 0.2


def test_kuairec_fixture_duplicates_keep_last():
  q, user_ids, item_ids = load_kuairec_matrix(KUAIREC_FIXTURE)
  lines = {}
  with open(KUAIREC_FIXTURE, newline='') as f:
    for row in csv.DictReader(f):
      pair = (int(row['user_id']), int(row['video_id']))
      lines.setdefault(pair, []).append(float(row['watch_ratio']))
  dups = {p: v for p, v in lines.items() if len(v) > 1}
  assert len(dups) == 2
  for (u, v), ratios in dups.items():
    got = q[list(user_ids).index(u), list(item_ids).index(v)]
    first, last = (min(max(r, 0.0), 10.0) for r in (ratios[0], ratios[-1]))
    assert got == pytest.approx(last) and got != pytest.approx(first)


def test_kuairec_like_generator_loads_as_generated(tmp_path):
  """The generated stand-in for experiment (d): format, shape, range, ids."""
  from cpg_jax.environments import kuairec_like
  columns = kuairec_like.generate_arrays(users=60, videos=90, seed=3)
  path = str(tmp_path / 'like.csv')
  lines = kuairec_like.write_csv(path, columns, lines_per_chunk=1000)
  again = kuairec_like.generate_arrays(users=60, videos=90, seed=3)
  for name in columns:  # a pure function of (users, videos, seed)
    np.testing.assert_array_equal(columns[name], again[name])
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
    f.seek(0)
    assert f.readline().strip() == kuairec_like.HEADER
  assert len(rows) == lines == len(columns['user_id'])
  # Every pair at most once, ~99.6% observed, every user and video present.
  pairs = {(int(r['user_id']), int(r['video_id'])) for r in rows}
  assert len(pairs) == lines and 0.98 * 60 * 90 < lines <= 60 * 90
  q, user_ids, item_ids = load_kuairec_matrix(path)
  assert q.shape == (60, 90)
  assert list(user_ids) != sorted(user_ids)
  for r in rows[:500]:
    u = list(user_ids).index(int(r['user_id']))
    v = list(item_ids).index(int(r['video_id']))
    assert q[u, v] == pytest.approx(min(float(r['watch_ratio']), 10.0))
    assert int(r['play_duration']) == round(
        float(r['watch_ratio']) * int(r['video_duration']))
    assert r['date'] == r['time'][:10].replace('-', '')
  ratios = columns['watch_ratio']
  assert ratios.min() == 0.0 and 0.5 < np.median(ratios) < 1.0
  # A two-tower model has something to learn: users' preferences differ.
  assert np.corrcoef(q[0], q[1])[0, 1] < 0.9


def test_kuairec_like_command_line(tmp_path):
  out = tmp_path / 'small_matrix.csv'
  result = subprocess.run(
      [sys.executable, '-m', 'cpg_jax.environments.kuairec_like', '--out', str(out),
       '--users', '20', '--videos', '30', '--seed', '1'],
      capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(FIXTURES)))
  assert result.returncode == 0, result.stderr
  assert '20 users x 30 videos' in result.stdout
  env = make_kuairec_environment(str(out))
  assert (env.num_contexts, env.num_items) == (20, 30)


def test_kuairec_hand_example_column_order(tmp_path):
  # Columns in another order, an extra quoted column with a comma, a blank line.
  path = _write(tmp_path / 'm.csv',
                'watch_ratio,note,video_id,user_id\n'
                '3.0,"a, b",7,50\n'
                '12.0,x,7,10\n'
                '\n'
                '-1.0,x,3,50\n'
                '4.0,x,7,50\n')
  q, users, items = load_kuairec_matrix(path)
  np.testing.assert_array_equal(users, [50, 10])
  np.testing.assert_array_equal(items, [7, 3])
  # (50,7) keeps the last line (4.0); 12 -> 10; -1 -> 0; (10,3) missing -> 0.
  np.testing.assert_array_equal(q, [[4.0, 0.0], [10.0, 0.0]])
  q5, _, _ = load_kuairec_matrix(path, clip_max=5.0)
  np.testing.assert_array_equal(q5, [[4.0, 0.0], [5.0, 0.0]])
  q_inf, _, _ = load_kuairec_matrix(path, clip_max=None)
  np.testing.assert_array_equal(q_inf, [[4.0, 0.0], [12.0, 0.0]])
  with pytest.raises(ValueError, match='clip_max'):
    load_kuairec_matrix(path, clip_max=0)


_HEADER = 'user_id,video_id,play_duration,watch_ratio\n'


@pytest.mark.parametrize(
    'name, text, phrases',
    [('empty.csv', '', ['is empty']),
     ('blank.csv', '\n\n', ['is empty']),
     ('header_only.csv', _HEADER, ['no data rows']),
     ('no_ratio.csv', 'user_id,video_id,play_duration\n1,2,3\n',
      ["missing required column 'watch_ratio'", "'play_duration'"]),
     ('no_user.csv', 'uid,video_id,watch_ratio\n1,2,3\n',
      ["missing required column 'user_id'", "'uid'"]),
     ('text_ratio.csv', _HEADER + '1,2,3,0.5\n1,3,3,abc\n',
      ['line 3', "watch_ratio value 'abc' is not a number"]),
     ('empty_ratio.csv', _HEADER + '1,2,3,0.5\n1,3,3,\n',
      ['line 3', 'is not a number']),
     ('nan_ratio.csv', _HEADER + '1,2,3,nan\n', ['line 2', 'not a finite']),
     ('text_id.csv', _HEADER + '1,2,3,0.5\n\n7,v9,3,0.5\n',
      ['line 4', "video_id value 'v9' is not a number"]),
     ('negative_id.csv', _HEADER + '-4,2,3,0.5\n',
      ['line 2', 'negative user_id']),
     ('fraction_id.csv', _HEADER + '4,2.5,3,0.5\n',
      ['line 2', 'video_id', 'not an integer']),
     ('short_line.csv', _HEADER + '4,2,3,0.5\n4,3\n',
      ['line 3', 'has 2 fields'])])
def test_kuairec_malformed(tmp_path, name, text, phrases):
  path = _write(tmp_path / name, text)
  with pytest.raises(DataFileError) as info:
    load_kuairec_matrix(path)
  message = str(info.value)
  assert path in message and info.value.path == path
  for phrase in phrases:
    assert phrase in message, message
  assert isinstance(info.value, ValueError)


def test_missing_files(tmp_path):
  path = str(tmp_path / 'nope.csv')
  for load in (load_kuairec_matrix, load_dense_matrix, make_kuairec_environment):
    with pytest.raises(DataFileError, match='file not found') as info:
      load(path)
    assert path in str(info.value)
  with pytest.raises(DataFileError, match='not a regular file'):
    load_dense_matrix(str(tmp_path))


def test_dense_matrix_loaders(tmp_path):
  m = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0
  np.save(tmp_path / 'm.npy', m)
  with open(tmp_path / 'i.NPY', 'wb') as f:  # np.save(path) would add .npy
    np.save(f, np.arange(6).reshape(2, 3))
  np.testing.assert_allclose(load_dense_matrix(tmp_path / 'm.npy'), m,
                             rtol=1e-7)
  got = load_dense_matrix(str(tmp_path / 'i.NPY'))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [[0, 1, 2], [3, 4, 5]])
  body = '\n'.join(','.join(repr(float(v)) for v in row) for row in m) + '\n'
  for name, text in [('plain.csv', body), ('header.csv', 'a,b,c,d\n' + body)]:
    got = load_dense_matrix(_write(tmp_path / name, text))
    assert got.shape == (3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, m, rtol=1e-6)
  one_row = load_dense_matrix(_write(tmp_path / 'row.csv', '1,2,3\n'))
  assert one_row.shape == (1, 3)


def _malformed_dense(tmp_path):
  cases = []
  nan = np.ones((3, 3))
  nan[1, 2] = np.nan
  np.save(tmp_path / 'nan.npy', nan)
  cases.append(('nan.npy', ['non-finite', 'row 1, column 2']))
  np.save(tmp_path / 'vec.npy', np.ones(5))
  cases.append(('vec.npy', ['2-D', '(5,)']))
  np.save(tmp_path / 'cube.npy', np.ones((2, 2, 2)))
  cases.append(('cube.npy', ['2-D']))
  np.save(tmp_path / 'text.npy', np.array([['a', 'b']]))
  cases.append(('text.npy', ['real numbers']))
  np.save(tmp_path / 'empty2d.npy', np.ones((0, 3)))
  cases.append(('empty2d.npy', ['empty matrix']))
  _write(tmp_path / 'corrupt.npy', 'not an npy file')
  cases.append(('corrupt.npy', ['not a readable .npy']))
  _write(tmp_path / 'inf.csv', '1,2\n3,inf\n')
  cases.append(('inf.csv', ['non-finite', 'row 1, column 1']))
  _write(tmp_path / 'text.csv', 'a,b\n1,2\n3,x\n')
  cases.append(('text.csv', ['line 3, column 2', "'x' is not a number"]))
  _write(tmp_path / 'ragged.csv', '1,2\n3,4,5\n')
  cases.append(('ragged.csv', ['line 2', 'has 3 columns']))
  _write(tmp_path / 'header_only.csv', 'a,b,c\n')
  cases.append(('header_only.csv', ['no data rows']))
  _write(tmp_path / 'empty.csv', '')
  cases.append(('empty.csv', ['is empty']))
  _write(tmp_path / 'matrix.txt', '1,2\n')
  cases.append(('matrix.txt', ["unknown extension '.txt'", '.npy or .csv']))
  return cases


def test_dense_matrix_malformed(tmp_path):
  for name, phrases in _malformed_dense(tmp_path):
    path = str(tmp_path / name)
    with pytest.raises(DataFileError) as info:
      load_dense_matrix(path)
    message = str(info.value)
    assert path in message, message
    for phrase in phrases:
      assert phrase in message, (name, message)


def test_kuairec_environment(caplog):
  with caplog.at_level(logging.INFO):
    env = make_kuairec_environment(KUAIREC_FIXTURE)
  q, _, _ = load_kuairec_matrix(KUAIREC_FIXTURE)
  assert isinstance(env, RewardMatrixEnvironment) and isinstance(env, Environment)
  assert (env.num_contexts, env.num_items) == (30, 40)
  assert float(env.noise_std) == pytest.approx(0.3)
  ctx = jnp.array([0, 5, 29])
  items = jnp.array([[0, 39, 7], [1, 2, 3], [10, 10, 0]])
  np.testing.assert_array_equal(env.expected_score(ctx, items),
                                q[np.asarray(ctx)[:, None], np.asarray(items)])
  np.testing.assert_array_equal(env.mean_reward(ctx, items),
                                env.expected_score(ctx, items))
  all_ctx = jnp.arange(30)
  ids = np.asarray(env.optimal_items(all_ctx, 10))
  assert ids.dtype == np.int32
  np.testing.assert_allclose(np.take_along_axis(q, ids.astype(np.int64), 1),
                             -np.sort(-q, axis=1)[:, :10])
  np.testing.assert_array_equal(
      ids, np.argsort(-q, axis=1, kind='stable')[:, :10])
  with pytest.raises(ValueError, match='k must'):
    env.optimal_items(all_ctx, 41)
  contexts = env.sample_contexts(jax.random.key(0), 3000)
  assert set(np.unique(np.asarray(contexts))) == set(range(30))
  # The environment is a pytree argument of jitted code; noise_std is a leaf.
  f = jax.jit(lambda e, k: e.sample_reward(k, ctx, items))
  assert f(env, jax.random.key(1)).shape == (3, 3)
  quiet = env.replace(noise_std=jnp.float32(0.0))
  np.testing.assert_array_equal(f(quiet, jax.random.key(1)),
                                env.expected_score(ctx, items))


def test_reward_matrix_noise_monte_carlo():
  m = np.array([[0.5, 2.0, 9.0], [1.0, 4.0, 0.0]], np.float32)
  env = make_reward_matrix_environment(m)
  n = 40_000
  ctx = jnp.array([0, 0, 0, 1, 1, 1])
  items = jnp.broadcast_to(jnp.array([0, 1, 2, 0, 1, 2])[:, None], (6, n))
  r = _np(env.sample_reward(jax.random.key(7), ctx, items))
  q = m[np.asarray(ctx), [0, 1, 2, 0, 1, 2]].astype(np.float64)
  sd = 0.3 * q
  np.testing.assert_array_less(np.abs(r.mean(1) - q), 5 * sd / np.sqrt(n) + 1e-9)
  np.testing.assert_array_less(np.abs(r.std(1) - sd),
                               5 * sd / np.sqrt(2 * n) + 1e-9)
  assert (r[5] == 0).all()  # q = 0 gives reward 0 exactly


def test_reward_matrix_builder_validation():
  with pytest.raises(ValueError, match='2-D'):
    make_reward_matrix_environment(np.ones(4))
  with pytest.raises(ValueError, match='finite'):
    make_reward_matrix_environment(np.array([[1.0, np.inf]]))
  with pytest.raises(ValueError, match='non-empty'):
    make_reward_matrix_environment(np.ones((0, 4)))
  with pytest.raises(ValueError, match='noise_std'):
    make_reward_matrix_environment(np.ones((2, 2)), noise_std=-0.1)
  with pytest.raises(ValueError, match='noise_std'):
    make_kuairec_environment(KUAIREC_FIXTURE, noise_std=float('nan'))
  env = make_reward_matrix_environment(jnp.ones((2, 3)), noise_std=0)
  assert env.matrix.dtype == jnp.float32 and float(env.noise_std) == 0.0
