"""Built-in data sets.

Vendored classics (see ``data/README.md`` for sources and licences):
:func:`load_tonedata`, :func:`load_npreg`, :func:`load_faithful`.
Generators of inverse problems (each documents the number of branches of its
inverse and has a function returning them): :func:`make_inverse_sine`
(:func:`inverse_sine_branches`), :func:`make_robot_arm`
(:func:`robot_arm_inverse`), :func:`make_nlink_arm` (:func:`nlink_arm_inverse`),
and :func:`make_kinematic_tracking` (a stick figure through time).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ._bunch import Bunch
from .generators import (
    inverse_sine_branches,
    make_inverse_sine,
    make_kinematic_tracking,
    make_nlink_arm,
    make_robot_arm,
    nlink_arm_forward,
    nlink_arm_inverse,
    robot_arm_forward,
    robot_arm_inverse,
)

__all__ = [
    "load_tonedata",
    "load_npreg",
    "load_faithful",
    "make_inverse_sine",
    "make_robot_arm",
    "robot_arm_forward",
    "inverse_sine_branches",
    "robot_arm_inverse",
    "make_nlink_arm",
    "nlink_arm_forward",
    "nlink_arm_inverse",
    "make_kinematic_tracking",
]


def _read_csv(name: str):
    with resources.files(__package__).joinpath("data", name).open("r") as f:
        header = [h.strip('"') for h in f.readline().strip().split(",")]
        rows = [line.strip().split(",") for line in f if line.strip()]
    cols = {}
    for j, h in enumerate(header):
        vals = [r[j].strip('"') for r in rows]
        try:
            cols[h] = np.array([float(v) for v in vals])
        except ValueError:
            cols[h] = np.array(vals)
    return header, cols


def _bunch(name, features, target, descr, as_frame):
    header, cols = _read_csv(name)
    data = np.column_stack([cols[f] for f in features])
    tgt = cols[target]
    out = Bunch(data=data, target=tgt, feature_names=list(features), target_name=target, columns=cols, DESCR=descr)
    if as_frame:
        import pandas as pd  # optional (not a moekit dependency): only as_frame=True needs it

        out["frame"] = pd.DataFrame({h: cols[h] for h in header})
        out["data"] = out["frame"][list(features)]
        out["target"] = out["frame"][target]
    return out


def load_tonedata(as_frame: bool = False) -> Bunch:
    """Tone perception data (Cohen 1980): 150 rows, ``tuned`` against ``stretchratio``.

    Parameters
    ----------
    as_frame : bool, default=False
        Also return the whole table as a pandas DataFrame ``frame``; ``data``
        is then a DataFrame and ``target`` a Series (needs pandas).

    Returns
    -------
    Bunch
        ``data`` (150, 1) stretch ratio, ``target`` (150,) tuned ratio.

    Shapes
    ------
    data (n, 1) and target (n,) with n = 150; ``columns`` maps each of the
    2 column names to an (n,) array; with ``as_frame`` ``frame`` is (n, 2).

    Examples
    --------
    >>> d = load_tonedata()
    >>> d.data.shape, d.target.shape
    ((150, 1), (150,))
    """
    return _bunch("tonedata.csv", ["stretchratio"], "tuned", "Tone perception (Cohen 1980), from R mixtools.", as_frame)


def load_npreg(as_frame: bool = False) -> Bunch:
    """flexmix's NPreg: a two-component mixture of regressions (200 rows).

    ``data`` (200, 1) is x; ``target`` (200,) is ``yn`` (Gaussian response);
    ``columns`` also holds ``yp`` (Poisson), ``yb`` (binary) and the true ``class``.

    Parameters
    ----------
    as_frame : bool, default=False
        Also return the whole table as a pandas DataFrame ``frame``; ``data``
        is then a DataFrame and ``target`` a Series (needs pandas).

    Returns
    -------
    Bunch
        ``data``, ``target``, ``feature_names``, ``target_name``,
        ``columns``, ``DESCR`` (and ``frame`` with ``as_frame``).

    Shapes
    ------
    data (n, 1) and target (n,) with n = 200; ``columns`` maps each of the
    7 column names (x, yn, yp, yb, class, id1, id2) to an (n,) array; with
    ``as_frame`` ``frame`` is (n, 7).

    Examples
    --------
    >>> d = load_npreg()
    >>> d.data.shape, sorted(set(d.columns["class"].astype(int).tolist()))
    ((200, 1), [1, 2])
    """
    return _bunch("NPreg.csv", ["x"], "yn", "flexmix NPreg artificial mixture of regressions.", as_frame)


def load_faithful(as_frame: bool = False) -> Bunch:
    """Old Faithful: ``eruptions`` (data, (272, 1)) and ``waiting`` (target, (272,)).

    Parameters
    ----------
    as_frame : bool, default=False
        Also return the whole table as a pandas DataFrame ``frame``; ``data``
        is then a DataFrame and ``target`` a Series (needs pandas).

    Returns
    -------
    Bunch
        ``data``, ``target``, ``feature_names``, ``target_name``,
        ``columns``, ``DESCR`` (and ``frame`` with ``as_frame``).

    Shapes
    ------
    data (n, 1) and target (n,) with n = 272; ``columns`` maps each of the
    2 column names to an (n,) array; with ``as_frame`` ``frame`` is (n, 2).

    Examples
    --------
    >>> load_faithful().target.shape
    (272,)
    """
    return _bunch("faithful.csv", ["eruptions"], "waiting", "Old Faithful geyser data (R datasets).", as_frame)
