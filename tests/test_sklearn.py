"""graphnn's scikit-learn estimators: scikit-learn's own estimator checks, pipelines, search."""

import doctest

import numpy as np
import pytest
from sklearn.datasets import load_iris, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import graphnn.sklearn as gsk
from graphnn.sklearn import GraphnnClassifier, GraphnnRegressor

# The NumPy reference back end: the checks fit dozens of shapes, and it compiles nothing.
FAST = {"hidden": (8,), "epochs": 5, "backend": "numpy"}


@parametrize_with_checks([GraphnnClassifier(**FAST), GraphnnRegressor(**FAST)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_module_example_runs():
    result = doctest.testmod(gsk)
    assert result.attempted > 0 and result.failed == 0


def test_classifier_in_a_pipeline_with_cross_validation():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]  # string labels
    clf = make_pipeline(StandardScaler(), GraphnnClassifier(hidden=(16,), lr=0.02, epochs=60))
    scores = cross_val_score(clf, X, names, cv=3)
    assert scores.mean() > 0.9, scores
    fitted = clf.fit(X, names)
    assert set(fitted.predict(X[:10])) <= set(names)
    proba = fitted.predict_proba(X[:5])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_grid_search_over_the_learning_rate():
    X, y = make_regression(n_samples=120, n_features=4, noise=0.1, random_state=0)
    y = y / y.std()
    search = GridSearchCV(
        GraphnnRegressor(hidden=(16,), activation="tanh", epochs=80, backend="numpy"),
        {"lr": [1e-4, 3e-2]},
        cv=3,
    )
    search.fit(X, y)
    assert search.best_params_ == {"lr": 3e-2}
    assert search.best_score_ > 0.9


def test_bad_settings_are_named():
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="activation 'nope'"):
        GraphnnClassifier(activation="nope", **{**FAST}).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        GraphnnClassifier(**FAST).fit(X, np.zeros(4))
