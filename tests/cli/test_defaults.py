"""The command line and Python share their defaults: every option of ``moekit fit`` that is not given leaves the
estimator's own default in place (``n_init``, ``max_iter``, ``tol``, ``init`` and the rest); only the seed
differs, 0 on the command line so that runs repeat."""

import re

import pytest

from moekit.cli.fit import _estimator_for
from moekit.cli.parser import build_parser
from moekit.estimators import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor

CASES = [
    ("moe", "regression", MoERegressor),
    ("moe", "classification", MoEClassifier),
    ("hme", "regression", HMERegressor),
    ("hme", "classification", HMEClassifier),
    ("mdn", "regression", MDNRegressor),
]


def _fit_args(*extra):
    return build_parser().parse_args(["fit", "data.csv", "--target", "y", "-o", "m.moekit", *extra])


@pytest.mark.parametrize("model, task, cls", CASES)
def test_fit_without_options_builds_the_python_default_estimator(model, task, cls):
    args = _fit_args("--model", model)
    est = _estimator_for(args, task, None)
    assert type(est) is cls
    got, want = est.get_params(), cls().get_params()
    assert got.pop("random_state") == 0  # the one difference: runs repeat
    want.pop("random_state")
    assert got == want


@pytest.mark.parametrize("model, task, cls", CASES)
def test_options_given_reach_the_estimator(model, task, cls):
    args = _fit_args("--model", model, "--max-iter", "7", "--seed", "5")
    params = _estimator_for(args, task, 3).get_params()
    assert params["random_state"] == 5
    assert params["max_epochs" if model == "mdn" else "max_iter"] == 7
    assert params[{"moe": "n_experts", "hme": "branching", "mdn": "n_components"}[model]] == 3


def _help_default(option: str) -> list[int]:
    """The numbers '(default N)' in the help of an option of 'moekit fit'."""
    fit = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
               if option in a.option_strings)
    assert fit.default is None, f"{option} must default to None (the estimator's default), not {fit.default!r}"
    return [int(n) for n in re.findall(r"default(?: as in Python:)? (\d+)", fit.help)] + \
        [int(n) for n in re.findall(r"MDN: (\d+)", fit.help)]


def test_the_help_states_the_python_defaults():
    moe, mdn, hme = MoERegressor().get_params(), MDNRegressor().get_params(), HMERegressor().get_params()
    assert _help_default("--n-init") == [moe["n_init"]]
    assert _help_default("--max-iter") == [moe["max_iter"], mdn["max_epochs"]]
    assert _help_default("--experts") == [moe["n_experts"], mdn["n_components"]]
    assert _help_default("--depth") == [hme["depth"]]
    assert _help_default("--branching") == [hme["branching"]]
    assert _help_default("--target-noise") == [int(mdn["target_noise"])]
