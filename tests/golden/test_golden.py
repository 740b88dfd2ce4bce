"""Behaviour unchanged: every case of ``cases.py`` recomputed with the installed moekit equals its golden value.

The golden values (``golden_values.json``) were recorded by ``record.py`` from
commit 3f50516.  EM cases are compared to 1e-10 (relative for values above 1 in
magnitude), network cases (neural gates and experts, MDNs in float32,
gradient-trained trajectories) to 1e-6; iteration counts, convergence flags,
integer outputs and list lengths exactly.  Histories are mean per-row
log-likelihoods (``fit_result_.history`` / ``FitResult.history``).

Set ``MOEKIT_GOLDEN_EXPECT_DIR`` to a folder to check that moekit is imported
from there, and ``MOEKIT_GOLDEN_EXACT=1`` to demand bit-for-bit equality (both
used to prove the test passes on the recorded code itself).  Note that
``python -m pytest`` run from the repository root imports the repository's
moekit whatever PYTHONPATH says (the current directory and the root conftest
come first on sys.path); to test another copy use
``PYTHONPATH=/that/copy pytest --import-mode=importlib tests/golden``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    modname = "moekit_golden_" + name
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, os.path.join(HERE, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


cases = _load("cases")

with open(os.path.join(HERE, "golden_values.json")) as _f:
    GOLDEN = json.load(_f)


def test_moekit_location():
    """With MOEKIT_GOLDEN_EXPECT_DIR set, moekit must come from that folder."""
    import moekit

    want = os.environ.get("MOEKIT_GOLDEN_EXPECT_DIR")
    if want:
        assert os.path.realpath(moekit.__file__).startswith(os.path.realpath(want) + os.sep), moekit.__file__


def test_every_case_has_golden_values():
    assert sorted(GOLDEN["cases"]) == sorted(cases.CASES)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if c.slow else [], id=n) for n, c in cases.CASES.items()],
)
def test_golden(name):
    golden = GOLDEN["cases"][name]
    c = cases.CASES[name]
    assert golden["tolerance"] == c.tolerance
    new = cases.run_case(name)
    tol = 0.0 if os.environ.get("MOEKIT_GOLDEN_EXACT") == "1" else cases.TOLERANCES[c.tolerance]
    cases.compare(golden, new, tol, name)
