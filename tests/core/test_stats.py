"""Tests for foresight.core.stats: the ridge regression and linear probe."""

import numpy as np
import pytest

from foresight.core.stats import ridge_fit, ridge_probe_accuracy


def test_ridge_fit_recovers_a_linear_map_with_its_bias():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    W_true = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]])
    Y = X @ W_true + np.array([4.0, -1.0])
    W = ridge_fit(X, Y, ridge=0.0)
    assert W.shape == (4, 2)
    np.testing.assert_allclose(W[:3], W_true, atol=1e-10)
    np.testing.assert_allclose(W[3], [4.0, -1.0], atol=1e-10)
    # the ridge shrinks the weights (the bias too) towards 0
    assert np.abs(ridge_fit(X, Y, ridge=100.0)).sum() < np.abs(W).sum()


def test_ridge_fit_is_well_posed_for_collinear_features():
    X = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])  # second column = 2 x first
    W = ridge_fit(X, np.array([1.0, 2.0, 3.0]), ridge=1e-3)
    assert np.isfinite(W).all()
    np.testing.assert_allclose(np.c_[X, np.ones(3)] @ W, [1.0, 2.0, 3.0], atol=1e-2)


def test_ridge_probe_accuracy_on_separable_and_on_uninformative_features():
    rng = np.random.default_rng(1)
    y, y_test = rng.integers(3, size=200), rng.integers(3, size=100)
    onehot = np.eye(3)
    assert ridge_probe_accuracy(onehot[y], y, onehot[y_test], y_test, 3) == 1.0
    noise = ridge_probe_accuracy(rng.normal(size=(200, 2)), y, rng.normal(size=(100, 2)), y_test, 3)
    assert noise < 0.6  # chance is 1/3


def test_bad_inputs_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="ridge must be >= 0, got -1"):
        ridge_fit(np.zeros((3, 2)), np.zeros(3), ridge=-1)
    with pytest.raises(ValueError, match="one row per sample, got 3 and 4 rows"):
        ridge_fit(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="X must be \\[N, F\\], got shape \\(3,\\)"):
        ridge_fit(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="y must be in \\[0, 2\\), got values in \\[0, 2\\]"):
        ridge_probe_accuracy(np.zeros((3, 1)), np.array([0, 1, 2]), np.zeros((1, 1)), np.array([0]), 2)
