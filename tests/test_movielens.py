"""Tests of the MovieLens environment (cpg_jax/environments/movielens.py).

Every data file is generated here by `_planted_ratings` and written in
MovieLens's u.data or RecBole's .inter format: no MovieLens data is in the
repository (its licence restricts redistribution). One test reads the file
the recbole wheel installs, when it is installed.
"""

from __future__ import annotations

import importlib.machinery
import json
import logging
import os
import sys
import time

import ml_collections
import numpy as np
import pytest

from cpg_jax.training import cli
from cpg_jax.training import config as config_lib
from cpg_jax.training import loop
from cpg_jax.environments import DataFileError
from cpg_jax.environments import load_movielens_matrix
from cpg_jax.environments import make_movielens_environment
from cpg_jax.environments import MovieLensNotInstalledError
from cpg_jax.environments import movielens
from cpg_jax.environments import RewardMatrixEnvironment

INTER_HEADER = 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n'


# --------------------------------------------------------------- generator --


def _planted_ratings(num_users=60, num_items=80, rank=3, density=0.5, seed=0,
                     round_to_stars=False):
  """Ratings sampled from a planted biased low-rank matrix.

  Q* = 3 + b_u + c_i + P Q^T (biases ~ N(0, 0.3^2), factors ~ N(0, 0.45^2)),
  clipped to [1, 5]; each pair is rated with probability `density`. Ids are
  non-contiguous (user id 7u + 3, item id 11i + 5) and the lines are in a
  shuffled order, so the loader's id mapping is exercised.

  Returns:
    (Q* float64 `[users, items]`, user ids `[n]`, item ids `[n]`,
    ratings `[n]`, timestamps `[n]`), one line per rating.
  """
  rng = np.random.default_rng(seed)
  planted = (3.0 + rng.normal(0, 0.3, (num_users, 1)) + rng.normal(0, 0.3, (1, num_items))
             + rng.normal(0, 0.45, (num_users, rank)) @ rng.normal(0, 0.45, (rank, num_items)))
  planted = np.clip(planted, 1.0, 5.0)
  rated = rng.random((num_users, num_items)) < density
  rated[np.arange(num_users), rng.integers(0, num_items, num_users)] = True
  rated[rng.integers(0, num_users, num_items), np.arange(num_items)] = True
  users, items = np.nonzero(rated)
  order = rng.permutation(len(users))
  users, items = users[order], items[order]
  ratings = planted[users, items]
  if round_to_stars:
    ratings = np.round(ratings)
  timestamps = 880_000_000 + rng.integers(0, 10**7, len(users))
  return planted, 7 * users + 3, 11 * items + 5, ratings, timestamps


def _write_ratings(path, file_format, users, items, ratings, timestamps=None):
  """Writes ratings as MovieLens u.data ('u.data') or RecBole .inter ('inter')."""
  if timestamps is None:
    timestamps = np.arange(len(users)) + 880_000_000
  lines = [INTER_HEADER] if file_format == 'inter' else []
  lines += [f'{u}\t{i}\t{r:.6g}\t{t}\n'
            for u, i, r, t in zip(users, items, ratings, timestamps)]
  with open(path, 'w') as f:
    f.writelines(lines)
  return str(path)


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


@pytest.fixture(scope='module')
def planted():
  return _planted_ratings()


@pytest.fixture
def udata_file(tmp_path, planted):
  _, users, items, ratings, timestamps = planted
  return _write_ratings(tmp_path / 'u.data', 'u.data', users, items, ratings, timestamps)


# ----------------------------------------------------------------- parsing --


def test_both_formats_parse_to_the_same_ratings(tmp_path, planted):
  _, users, items, ratings, timestamps = planted
  udata = movielens.load_ratings(
      _write_ratings(tmp_path / 'u.data', 'u.data', users, items, ratings, timestamps))
  inter = movielens.load_ratings(
      _write_ratings(tmp_path / 'ml.inter', 'inter', users, items, ratings, timestamps))
  assert udata.file_format == 'u.data' and inter.file_format == 'RecBole .inter'
  for name in ('users', 'items', 'ratings', 'user_ids', 'item_ids'):
    np.testing.assert_array_equal(getattr(udata, name), getattr(inter, name))
  # Dense indices in ascending order of the original ids, every line kept.
  np.testing.assert_array_equal(udata.user_ids, np.unique(users))
  np.testing.assert_array_equal(udata.item_ids, np.unique(items))
  assert udata.num_lines == len(ratings) and udata.num_duplicates == 0
  np.testing.assert_array_equal(udata.user_ids[udata.users], users)
  np.testing.assert_array_equal(udata.item_ids[udata.items], items)
  np.testing.assert_allclose(udata.ratings, ratings, atol=1e-5)


def test_hand_example_id_mapping_and_column_order(tmp_path):
  """RecBole columns in another order, an extra column, blank lines, CRLF."""
  text = ('item_id:token\tlabel:float\trating:float\tuser_id:token\r\n'
          '50\t1\t4\t9\r\n'
          '\r\n'
          '7\t0\t2.5\t9\r\n'
          '50\t1\t1\t3\r\n')
  ratings = movielens.load_ratings(_write(tmp_path / 'hand.inter', text))
  assert ratings.user_ids.tolist() == [3, 9] and ratings.item_ids.tolist() == [7, 50]
  got = {(int(ratings.user_ids[u]), int(ratings.item_ids[i])): float(r)
         for u, i, r in zip(ratings.users, ratings.items, ratings.ratings)}
  assert got == {(9, 50): 4.0, (9, 7): 2.5, (3, 50): 1.0}
  # u.data: the fourth field (timestamp) and any further one is ignored.
  udata = movielens.load_ratings(_write(tmp_path / 'u.data', '2\t1\t5\t881250949\textra\n'
                                        '1\t2\t3\t881250950\textra\n'))
  assert udata.users.tolist() == [1, 0] and udata.ratings.tolist() == [5.0, 3.0]


def test_duplicates_keep_the_last_and_are_logged(tmp_path, caplog):
  text = ('1\t10\t1\t100\n'
          '2\t10\t2\t100\n'
          '1\t10\t4\t50\n'   # the same pair: the last line (4) wins, not the latest time
          '1\t20\t3\t100\n'
          '1\t10\t5\t10\n')
  with caplog.at_level(logging.WARNING, logger='cpg_jax.environments.movielens'):
    ratings = movielens.load_ratings(_write(tmp_path / 'dup.data', text))
  assert ratings.num_duplicates == 2 and ratings.num_lines == 5
  got = {(int(u), int(i)): float(r)
         for u, i, r in zip(ratings.users, ratings.items, ratings.ratings)}
  assert got == {(0, 0): 5.0, (1, 0): 2.0, (0, 1): 3.0}
  warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warning) == 1 and '2 duplicated (user, item) lines (kept the last)' in warning[0]


_BAD_FILES = [
    ('empty.data', '', ['is empty']),
    ('blank.data', '\n\n', ['is empty', 'first line is blank']),
    ('noheader.inter', '1\t2\t3\t4\n', ['a .inter file must start with a header',
                                        'user_id:token']),
    ('norating.inter', 'user_id:token\titem_id:token\tscore:float\n1\t2\t3\n',
     ["missing required column 'rating'", "'score:float'"]),
    ('twice.inter', 'user_id:token\titem_id:token\trating:float\tuser_id:token\n1\t2\t3\t1\n',
     ["column 'user_id' appears 2 times"]),
    ('header_only.inter', INTER_HEADER, ['has a header but no data lines']),
    ('text_rating.data', '1\t2\t3\t0\n1\t3\tabc\t0\n', ['line 2', "rating value 'abc' is not a number"]),
    ('empty_rating.inter', INTER_HEADER + '1\t2\t3\t0\n1\t3\t\t0\n', ['line 3', 'is not a number']),
    ('high_rating.data', '1\t2\t7\t0\n', ['line 1', "rating '7' is outside the rating range [1, 5]"]),
    ('zero_rating.inter', INTER_HEADER + '1\t2\t3\t0\n\n4\t2\t0\t0\n',
     ['line 4', 'outside the rating range']),
    ('nan_rating.data', '1\t2\tnan\t0\n', ['line 1', 'not a finite number']),
    ('text_id.inter', INTER_HEADER + '1\t2\t3\t0\nu7\t2\t3\t0\n',
     ['line 3', "user_id value 'u7' is not a number"]),
    ('fraction_id.data', '1\t2.5\t3\t0\n', ['line 1', "item value '2.5' is not an integer"]),
    ('negative_id.data', '1\t2\t3\t0\n-4\t2\t3\t0\n', ['line 2', "negative user '-4'"]),
    ('short_line.data', '1\t2\t3\t0\n1\t2\n', ['line 2', 'has 2 tab-separated field(s)',
                                               'needs at least 3']),
    ('header.data', 'user\titem\trating\ttimestamp\n1\t2\t3\t0\n',
     ['line 1', "user value 'user' is not a number", 'u.data has no header']),
    ('commas.data', '1,2,3,0\n', ['line 1', 'has 1 tab-separated field(s)',
                                  'tab-separated']),
]


@pytest.mark.parametrize('name, text, phrases', _BAD_FILES, ids=[c[0] for c in _BAD_FILES])
def test_malformed_files(tmp_path, name, text, phrases):
  path = _write(tmp_path / name, text)
  with pytest.raises(DataFileError) as info:
    movielens.load_ratings(path)
  message = str(info.value)
  assert message.startswith(path + ': ') and info.value.path == path
  for phrase in phrases:
    assert phrase in message, message


def test_unreadable_files(tmp_path):
  missing = str(tmp_path / 'nope.data')
  for load in (movielens.load_ratings, load_movielens_matrix, make_movielens_environment):
    with pytest.raises(DataFileError, match='file not found') as info:
      load(missing)
    assert missing in str(info.value)
  with pytest.raises(DataFileError, match='not a regular file'):
    movielens.load_ratings(str(tmp_path))
  latin1 = tmp_path / 'latin1.data'
  latin1.write_bytes('1\t2\t3\t0 caf\xe9\n'.encode('latin-1'))
  with pytest.raises(DataFileError, match='is not UTF-8 text'):
    movielens.load_ratings(str(latin1))
  one = _write(tmp_path / 'one.data', '1\t2\t3\t0\n')
  with pytest.raises(DataFileError, match='has 1 rating.*at least 2 are needed'):
    load_movielens_matrix(one, cache_dir=None)
  with pytest.raises(ValueError, match='rating_range'):
    movielens.load_ratings(one, rating_range=(5, 1))


@pytest.mark.parametrize('kwargs, phrase', [
    (dict(rank=-1), 'rank must be an integer >= 0'),
    (dict(rank=2.0), 'rank must be an integer'),
    (dict(l2=0.0), 'l2 must be a finite number > 0'),
    (dict(iterations=0), 'iterations must be an integer >= 1'),
    (dict(holdout=1.0), 'holdout must be a number in (0, 1)'),
    (dict(seed=-2), 'seed must be an integer >= 0'),
])
def test_fit_parameters_are_checked(udata_file, kwargs, phrase):
  with pytest.raises(ValueError) as info:
    load_movielens_matrix(udata_file, cache_dir=None, **kwargs)
  assert phrase in str(info.value)


# -------------------------------------------------------- the installed file --


def test_not_installed_says_how_to_install(monkeypatch):
  real_find_spec = movielens.importlib.util.find_spec
  monkeypatch.setattr(movielens.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'recbole' else real_find_spec(name, *a))
  for load in (movielens.installed_movielens_path, load_movielens_matrix):
    with pytest.raises(MovieLensNotInstalledError) as info:
      load()
    message = str(info.value)
    assert 'recbole is not installed' in message
    assert '`pip install --no-deps recbole==1.2.1`' in message
    assert '--config.env.data_path=' in message and 'u.data' in message
    assert isinstance(info.value, DataFileError)


def test_installed_without_the_file(monkeypatch, tmp_path):
  spec = importlib.machinery.ModuleSpec('recbole', None, is_package=True)
  spec.submodule_search_locations = [str(tmp_path)]
  monkeypatch.setattr(movielens.importlib.util, 'find_spec', lambda name, *a: spec)
  with pytest.raises(MovieLensNotInstalledError) as info:
    movielens.installed_movielens_path()
  message = str(info.value)
  assert str(tmp_path) in message and 'does not ship MovieLens-100K' in message
  assert 'pip install --no-deps recbole==1.2.1' in message


def test_not_installed_through_the_command_line(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(movielens.importlib.util, 'find_spec', lambda name, *a: None)
  config = _small_config(tmp_path, data_path='')
  with pytest.raises(SystemExit) as info:
    cli.run(config, str(tmp_path / 'run'))
  err = ' '.join(capsys.readouterr().err.split())
  assert info.value.code == 2 and err.startswith('error: ') and 'Traceback' not in err
  assert 'pip install --no-deps recbole==1.2.1' in err
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('name, text, phrases', [
    ('missing.data', None, ['missing.data', 'file not found']),
    ('bad.data', '1\t2\t3\t0\n1\t2\tlots\t0\n', ['bad.data', 'line 2', "'lots' is not a number"]),
])
def test_bad_file_through_the_command_line(tmp_path, capsys, name, text, phrases):
  path = str(tmp_path / name) if text is None else _write(tmp_path / name, text)
  with pytest.raises(SystemExit) as info:
    cli.run(_small_config(tmp_path, data_path=path), str(tmp_path / 'run'))
  err = ' '.join(capsys.readouterr().err.split())
  assert info.value.code == 2 and err.startswith('error: ') and 'Traceback' not in err
  for phrase in phrases:
    assert phrase in err, err
  assert not (tmp_path / 'run').exists()


def _installed_path_or_skip():
  try:
    return movielens.installed_movielens_path()
  except MovieLensNotInstalledError as err:
    pytest.skip(f'MovieLens-100K is not installed, the test needs it: {err}')


def test_locating_the_installed_file_does_not_import_recbole():
  already = 'recbole' in sys.modules
  path = _installed_path_or_skip()
  assert path.endswith(os.path.join('recbole', 'dataset_example', 'ml-100k', 'ml-100k.inter'))
  if not already:
    assert 'recbole' not in sys.modules and 'torch' not in sys.modules


def test_installed_movielens_100k(tmp_path):
  """The real file: 100,000 ratings, 943 x 1,682; held-out RMSE below 0.93.

  Measured with the defaults: RMSE 0.9174, MAE 0.7236 on the 10,000 held-out
  ratings (predicting the mean: 1.1449). The bound leaves room for BLAS
  round-off on other machines, not for a worse method.
  """
  path = _installed_path_or_skip()
  completed = load_movielens_matrix('', cache_dir=tmp_path)
  report = completed.report
  assert report.path == path and report.file_format == 'RecBole .inter'
  assert (report.num_lines, report.num_ratings, report.num_duplicates) == (100_000, 100_000, 0)
  assert completed.matrix.shape == (943, 1682) and completed.matrix.dtype == np.float32
  assert completed.user_ids.tolist() == list(range(1, 944))
  assert completed.item_ids.tolist() == list(range(1, 1683))
  assert report.num_heldout == 10_000
  assert report.heldout_rmse < 0.93 and report.heldout_mae < 0.74, report.summary()
  assert report.mean_rmse > 1.1
  assert completed.matrix.min() >= 1.0 and completed.matrix.max() <= 5.0
  start = time.perf_counter()
  again = load_movielens_matrix('', cache_dir=tmp_path)
  assert time.perf_counter() - start < 0.5 and again.report.from_cache
  np.testing.assert_array_equal(again.matrix, completed.matrix)


# -------------------------------------------------------------- completion --


def test_completion_recovers_a_planted_low_rank_matrix(udata_file, planted):
  truth = planted[0]
  fit = dict(rank=3, l2=0.05, iterations=30)
  first = load_movielens_matrix(udata_file, cache_dir=None, **fit)
  report = first.report
  assert report.num_heldout == round(0.1 * report.num_ratings)
  # Measured: RMSE 0.021, MAE 0.010 (the clipped planted entries are not low rank).
  assert report.heldout_rmse < 0.04 and report.heldout_mae < 0.02, report.summary()
  assert report.mean_rmse > 0.4  # the planted structure is far from trivial
  # The completed matrix, on every pair (rows and columns in ascending id).
  completion_rmse = np.sqrt(np.mean((first.matrix - truth) ** 2))
  assert completion_rmse < 0.04, completion_rmse
  # Deterministic: bit for bit the same matrix and numbers.
  second = load_movielens_matrix(udata_file, cache_dir=None, **fit)
  np.testing.assert_array_equal(first.matrix, second.matrix)
  assert (first.report.heldout_rmse, first.report.heldout_mae) == (
      second.report.heldout_rmse, second.report.heldout_mae)
  # A rank below the planted one cannot fit it as well.
  low = load_movielens_matrix(udata_file, cache_dir=None, **{**fit, 'rank': 1})
  assert low.report.heldout_rmse > 5 * report.heldout_rmse


def test_als_sweeps_never_increase_the_objective(planted):
  _, users, items, ratings, _ = planted
  users, items = np.unique(users, return_inverse=True)[1], np.unique(items, return_inverse=True)[1]
  l2 = 2.0

  def objective(fit):
    residual = fit.predict(users, items) - ratings
    return (np.sum(residual ** 2) + l2 * sum(
        np.sum(a ** 2) for a in (fit.user_bias, fit.item_bias, fit.user_factors,
                                 fit.item_factors)))

  values = [objective(movielens.fit_biased_als(users, items, ratings, 60, 80, rank=3, l2=l2,
                                               iterations=n)) for n in (1, 2, 4, 8)]
  assert all(b <= a * (1 + 1e-12) for a, b in zip(values, values[1:])), values
  biases = movielens.fit_biased_als(users, items, ratings, 60, 80, rank=0, l2=l2, iterations=3)
  assert biases.user_factors.shape == (60, 0) and objective(biases) > values[-1]


# ------------------------------------------------------------------- cache --


def test_cache_is_hit_keyed_and_atomic(udata_file, tmp_path):
  cache = tmp_path / 'cache'
  first = load_movielens_matrix(udata_file, cache_dir=cache)
  assert not first.report.from_cache and os.path.dirname(first.report.cache_path) == str(cache)
  assert os.listdir(cache) == [os.path.basename(first.report.cache_path)]  # no temporaries
  start = time.perf_counter()
  second = load_movielens_matrix(udata_file, cache_dir=cache)
  assert time.perf_counter() - start < 0.5
  assert second.report.from_cache and second.report.cache_path == first.report.cache_path
  np.testing.assert_array_equal(second.matrix, first.matrix)
  np.testing.assert_array_equal(second.user_ids, first.user_ids)
  np.testing.assert_array_equal(second.item_ids, first.item_ids)
  for field in ('heldout_rmse', 'heldout_mae', 'num_ratings', 'num_heldout', 'file_format'):
    assert getattr(second.report, field) == getattr(first.report, field)
  assert 'loaded from the cache' in second.report.summary()
  # Another fit parameter, or other bytes in the data file: another entry.
  other = load_movielens_matrix(udata_file, rank=2, cache_dir=cache)
  assert not other.report.from_cache and other.report.cache_path != first.report.cache_path
  with open(udata_file, 'a') as f:
    f.write('99999\t5\t4\t0\n')
  changed = load_movielens_matrix(udata_file, cache_dir=cache)
  assert not changed.report.from_cache and changed.matrix.shape[0] == first.matrix.shape[0] + 1


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'other_key', 'out_of_range'])
def test_a_damaged_cache_is_recomputed(udata_file, tmp_path, caplog, damage):
  cache = tmp_path / 'cache'
  first = load_movielens_matrix(udata_file, cache_dir=cache)
  path = first.report.cache_path
  if damage == 'garbage':
    _write(path, 'not an npz file')
  elif damage == 'truncated':
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  else:
    with np.load(path) as npz:
      arrays = dict(npz)
    if damage == 'other_key':
      arrays['key'] = np.array('0' * 64)
    else:
      arrays['matrix'] = arrays['matrix'] + 10.0
    with open(path, 'wb') as f:
      np.savez(f, **arrays)
  with caplog.at_level(logging.WARNING, logger='cpg_jax.environments.movielens'):
    again = load_movielens_matrix(udata_file, cache_dir=cache)
  assert not again.report.from_cache
  assert any('Ignoring the MovieLens cache file' in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(again.matrix, first.matrix)
  assert load_movielens_matrix(udata_file, cache_dir=cache).report.from_cache  # rewritten


def test_unwritable_cache_is_skipped_with_a_warning(udata_file, tmp_path, caplog):
  blocker = _write(tmp_path / 'a_file', 'x')  # a file where the directory should be
  with caplog.at_level(logging.WARNING, logger='cpg_jax.environments.movielens'):
    completed = load_movielens_matrix(udata_file, cache_dir=blocker)
  assert completed.report.cache_path == '' and 'not cached' in completed.report.summary()
  assert any('Could not write the MovieLens cache file' in r.getMessage()
             for r in caplog.records)


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert movielens.default_cache_dir() == os.path.join(str(tmp_path), 'cpg_jax')
  monkeypatch.setenv('XDG_CACHE_HOME', 'relative/dir')  # ignored, as the XDG spec says
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert movielens.default_cache_dir() == os.path.join(str(tmp_path), 'home', '.cache', 'cpg_jax')


# ------------------------------------------------------------- environment --


def _small_config(tmp_path, data_path, **overrides):
  return config_lib.apply_overrides(config_lib.default_config(), {
      'env.name': 'movielens', 'env.data_path': data_path,
      'env.cache_dir': str(tmp_path / 'cache'), 'num_candidates': 5, 'batch_size': 8,
      'num_steps': 10, 'eval_every': 10, 'checkpoint_every': 10, 'log_every': 10,
      'eval_contexts': 16, 'num_seeds': 1, **overrides})


def test_environment_is_the_completed_matrix(udata_file, tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger='cpg_jax.environments.movielens'):
    env = make_movielens_environment(udata_file, noise_std=0.2, cache_dir=tmp_path)
  completed = load_movielens_matrix(udata_file, cache_dir=tmp_path)
  assert isinstance(env, RewardMatrixEnvironment)
  assert (env.num_contexts, env.num_items) == completed.matrix.shape == (60, 80)
  np.testing.assert_array_equal(np.asarray(env.matrix), completed.matrix)
  assert float(env.noise_std) == pytest.approx(0.2)
  reports = [r.getMessage() for r in caplog.records if 'held-out RMSE' in r.getMessage()]
  assert len(reports) == 1 and udata_file in reports[0]


@pytest.mark.slow  # compiles a training chunk and the evaluation: 15-20 s on the loaded CPU
def test_trains_end_to_end(udata_file, tmp_path, caplog):
  config = _small_config(tmp_path, udata_file)
  workdir = str(tmp_path / 'run')
  lines = []
  with caplog.at_level(logging.INFO, logger='cpg_jax.environments.movielens'):
    loop.train_and_evaluate(config, workdir, log=lines.append)
  reports = [r.getMessage() for r in caplog.records if 'held-out RMSE' in r.getMessage()]
  assert len(reports) == 1, reports  # shown once per run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == [0, 10]
  final = records[-1]
  assert len(final['policy_value']) == 1 and all(np.isfinite(final['policy_value']))
  assert 1.0 <= final['optimal_value'] <= 5.0
  assert any('Done: 10 steps' in line for line in lines)


@pytest.mark.parametrize('field, value, phrase', [
    ('env.fit_rank', -1, '>= 0'),
    ('env.fit_l2', 0.0, '> 0.0'),
    ('env.fit_iterations', 0, '>= 1'),
    ('env.fit_holdout', 0.7, '<= 0.5'),
    ('env.fit_holdout', 0.0, '> 0.0'),
    ('env.cache_dir', 3, 'must be a string'),
    ('env.data_path', None, 'must be a string'),
    ('env.noise_std', -0.1, '>= 0.0'),
])
def test_bad_config_values(tmp_path, field, value, phrase):
  values = config_lib.apply_overrides(_small_config(tmp_path, '').to_dict(), {field: value})
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(ml_collections.ConfigDict(values))
  assert f'config.{field}' in str(info.value) and phrase in str(info.value), str(info.value)


def test_movielens_config_file_is_valid():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'movielens_config', os.path.join(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), 'configs', 'movielens.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('estimator=vpg,K=100')
  assert config.env.name == 'movielens' and config.env.data_path == ''
  assert (config.estimator, config.num_candidates) == ('vpg', 100)
  config_lib.validate(config, num_items=1682)
