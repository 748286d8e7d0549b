"""Sparsemax (estimators/protoattend/network.py) against a float64 NumPy reference, forward
and gradient, on the rows masked attention produces: -inf, float32 min, -1e9 beside O(1)
values, all -inf, and huge finite values."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from estimators.protoattend import network

INF = np.inf
F32_MIN = np.finfo(np.float32).min
F32_MAX = np.finfo(np.float32).max


def sparsemax_reference(row):
  """Sort-based sparsemax in float64 of the finite entries of `row`; -inf entries get 0,
  a row without finite entries is all zeros."""
  row = np.asarray(row, np.float64)
  out = np.zeros_like(row)
  finite = np.isfinite(row)
  if not finite.any():
    return out
  z = row[finite] - row[finite].max()  # shift-invariant; keeps 1 + k z_(k) exact in float64
  z_sorted = np.sort(z)[::-1]
  k = np.arange(1, len(z) + 1)
  support_size = k[1 + k * z_sorted > np.cumsum(z_sorted)].max()
  tau = (z_sorted[:support_size].sum() - 1) / support_size
  out[finite] = np.maximum(z - tau, 0)
  return out


def jacobian_vector_product(weights, upstream):
  """J^T w for the sparsemax Jacobian J = diag(s) - s s^T / |S| (symmetric), S = {p > 0}."""
  support = (weights > 0).astype(np.float64)
  size = max(support.sum(), 1.0)
  return support * (upstream - (support * upstream).sum() / size)


_RNG = np.random.RandomState(0)
ROWS = {
    "random": _RNG.randn(12) * 2,
    "random_wide": _RNG.randn(12) * 30,
    "ties": [1.0, 1.0, 0.5, 0.5, -2.0, 1.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0],
    "tie_at_the_support_boundary": [1.0, 0.0, -1.0] + [-5.0] * 9,  # z_2 == tau: p_2 = 0
    "all_equal": [0.25] * 12,
    "some_minus_inf": [0.3, -INF, 1.1, 0.9, -INF, 0.2, 1.0, -INF, -0.5, 0.7, -INF, 1.05],
    "single_finite": [-INF] * 5 + [7.0] + [-INF] * 6,
    "float32_min": [F32_MIN, 0.3, 0.9, F32_MIN, 1.0, 0.8, F32_MIN, 0.1, 0.95, F32_MIN, 0.5,
                    0.6],
    "all_float32_min": [F32_MIN] * 12,
    "minus_1e9_beside_small": [-1e9, 0.31, 0.52, -1e9, 0.45, 0.27, -1e9, -1e9, 0.5, -1e9,
                               0.1, -1e9],
    "all_minus_inf": [-INF] * 12,
    "large_positive": [1e30, 0.0, 1.0, 1e30, -1e30, 5.0, 1e29, 0.0, 1e30, 2.0, 3.0, 4.0],
    "float32_max_and_min": [F32_MAX, F32_MIN, 0.0, F32_MAX, 1.0, -INF, 2.0, 3.0, 4.0, 5.0,
                            6.0, 7.0],
}


def _sparsemax_and_gradient(logits, upstream):
  with tf.Graph().as_default():
    z = tf.constant(logits)
    weights = network.sparsemax(z)
    gradient = tf.gradients(tf.reduce_sum(tf.constant(upstream) * weights), z)[0]
    with tf.Session() as sess:
      return sess.run([weights, gradient])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_sparsemax_and_its_gradient_match_float64_reference(name, dtype):
  logits = np.array([ROWS[name]], np.float32).astype(dtype)  # float32-representable
  upstream = np.random.RandomState(1).randn(*logits.shape).astype(dtype)
  weights, gradient = _sparsemax_and_gradient(logits, upstream)
  expected = sparsemax_reference(logits[0])
  np.testing.assert_allclose(weights[0], expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(gradient[0], jacobian_vector_product(expected, upstream[0]),
                             rtol=0, atol=1e-5)
  masked = ~np.isfinite(logits[0])
  np.testing.assert_array_equal(weights[0][masked], 0.0)
  np.testing.assert_array_equal(gradient[0][masked], 0.0)


def test_sparsemax_masked_entries_drop_out_of_the_row():
  """Masked entries (-inf, -1e9 or float32 min) get weight 0 and leave the others as the
  sparsemax of the unmasked sub-row."""
  unmasked = np.array([0.3, 1.1, 0.9, 0.2, 1.0, -0.5, 0.7, 1.05], np.float32)
  alone, _ = _sparsemax_and_gradient(unmasked[None], np.ones([1, 8], np.float32))
  rows = np.array([np.concatenate([unmasked, [mask] * 4]) for mask in (-INF, -1e9, F32_MIN)],
                  np.float32)
  weights, gradient = _sparsemax_and_gradient(rows, np.ones_like(rows))
  for row, row_gradient in zip(weights, gradient):
    np.testing.assert_allclose(row[:8], alone[0], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(row[8:], 0.0)
    np.testing.assert_array_equal(row_gradient[8:], 0.0)


def test_sparsemax_all_minus_inf_row_is_zeros_and_invalid_rows_are_nan():
  logits = np.array([[-INF] * 4, [1.0, INF, 0.0, -INF], [1.0, np.nan, 0.0, 2.0],
                     [0.0, 1.0, 0.5, -INF]], np.float32)
  weights, gradient = _sparsemax_and_gradient(logits, np.ones_like(logits))
  np.testing.assert_array_equal(weights[0], 0.0)
  np.testing.assert_array_equal(gradient[0], 0.0)
  assert np.isnan(weights[1]).all() and np.isnan(weights[2]).all()
  np.testing.assert_array_equal(gradient[1:3], 0.0)
  # A valid row in the same batch is unaffected.
  np.testing.assert_allclose(weights[3], sparsemax_reference(logits[3]), atol=1e-7)
  np.testing.assert_allclose(gradient[3], jacobian_vector_product(weights[3], 1.0), atol=1e-7)


def test_sparsemax_matches_tf_contrib_where_contrib_is_defined():
  """Upstream ProtoAttend runs tf.contrib.sparsemax (TF 1.15 only): same weights on
  ordinary rows and on -inf / -1e9 rows, where contrib is exact."""
  contrib = pytest.importorskip("tensorflow.contrib.sparsemax",
                                reason="tf.contrib exists on TF 1.x only")
  rng = np.random.RandomState(2)
  logits = (rng.randn(6, 40) * np.array([0.1, 1, 3, 10, 30, 100])[:, None])
  logits[0, ::3] = -INF
  logits[1, ::4] = -1e9
  logits = logits.astype(np.float32)
  upstream = rng.randn(*logits.shape).astype(np.float32)
  with tf.Graph().as_default():
    z = tf.constant(logits)
    ours, theirs = network.sparsemax(z), contrib.sparsemax(z)
    gradients = [tf.gradients(tf.reduce_sum(upstream * w), z)[0] for w in (ours, theirs)]
    with tf.Session() as sess:
      ours, theirs, our_gradient, their_gradient = sess.run([ours, theirs] + gradients)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
  np.testing.assert_allclose(our_gradient, their_gradient, rtol=0, atol=1e-5)
