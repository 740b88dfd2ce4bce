"""The command line's parser: commands, options and argument types.

It imports nothing heavy: ``moekit --help``, ``moekit --version`` and ``moekit COMMAND --help`` answer
without loading torch.  Each subcommand records in ``command_module`` the module of :mod:`moekit.cli`
that runs it (its function is ``cmd_<command>``).
"""

from __future__ import annotations

import argparse
import math
import re

from .. import __version__
from .errors import UsageError

__all__ = ["COVARIANCES", "EXPERTS", "WHATS", "build_parser", "finite_float", "k_candidates", "memory_size",
           "nonnegative_float", "positive_float", "positive_int", "unit_interval"]

EXPERTS = ("linear", "poisson", "binomial", "gamma", "negative_binomial", "point_mass", "student_t", "mlp",
           "logistic")
COVARIANCES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")
WHATS = ("mean", "modes", "quantiles", "interval", "samples", "gate")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The ``moekit`` parser with its subcommands (demo, fit, predict, evaluate, report, info, summary)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors and requested output")
    common.add_argument("--seed", type=int, default=0, help="random seed for fitting, splitting and sampling (default 0)")
    common.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    common.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: 1 for tables under 50000 rows, where more threads "
                             "cost more than they save; torch's default above)")
    common.add_argument("--progress", action="store_true",
                        help="show progress bars even when stderr is not a terminal (a log file); without it they "
                             "show on a terminal only")

    p = _Parser(prog="moekit", description="Fit, inspect and use mixtures of experts on tables of data.",
                epilog="Exit codes: 0 ok, 1 data error, 2 usage error, 3 internal error. Standard output carries "
                       "only what a command prints as its result (messages from numerical libraries go to stderr); "
                       "-o never writes over the command's input files. Run 'moekit demo' for a first look.")
    p.add_argument("--version", action="version", version=f"moekit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[common], help="run a demo on built-in data (default: robot-arm)",
                       description="Generate or load built-in data, fit the right models, print the key numbers "
                                   "and write plots and an HTML report to an output folder.")
    d.add_argument("name", nargs="?", default="robot-arm", choices=["robot-arm", "inverse-sine", "tone", "tracking"])
    d.add_argument("-o", "--output", default=None, help="output folder (default moekit-output/demo-NAME)")
    d.set_defaults(command_module="demos")

    f = sub.add_parser("fit", parents=[common], help="fit a model to a CSV or Parquet file",
                       description="Fit a conditional mixture p(y | x) to a table and save it to a model file.")
    f.add_argument("data", help="CSV (.csv, .tsv) or Parquet (.parquet, .pq) file with a header row, or a folder of "
                                "such files (the parts of one data set: the same columns in each, read in the order of "
                                "their sorted paths)")
    f.add_argument("--target", "-t", nargs="+", metavar="COL",
                   help="target column(s) y (required unless --formula names the target)")
    f.add_argument("--features", nargs="+", metavar="COL", help="input columns x (default: every other column)")
    f.add_argument("--categorical", nargs="+", metavar="COL",
                   help="numeric input columns to treat as categories (text columns always are)")
    f.add_argument("--formula", default=None, metavar="FORMULA",
                   help="MoE, HME: the experts' formula as in R, e.g. 'y ~ x + I(x**2) + log(z) + g' (formulaic: "
                        "text columns are factors, the first level the reference); its left side names the target, so "
                        "it replaces --target, --features and --categorical (giving any of them too is an error)")
    f.add_argument("--gate-formula", default=None, metavar="FORMULA",
                   help="MoE, HME: the gate's one-sided formula, e.g. '~ x' (default: the experts' terms); needs "
                        "--formula")
    f.add_argument("--model", choices=["moe", "hme", "mdn"], default="moe",
                   help="mixture of experts (default), hierarchical mixture of experts, mixture density network")
    f.add_argument("--experts", "-k", type=positive_int, default=None, metavar="K",
                   help="number of experts (MDN: components; HME: branching of every gate); default as in Python: "
                        "2 (MDN: 5)")
    f.add_argument("--select-k", type=k_candidates, default=None, metavar="RANGE",
                   help="choose K in a range such as 1..8 (or a list such as 2,3,5; every K from 1 to 64 and at "
                        "most the number of rows) by --criterion")
    f.add_argument("--criterion", choices=["bic", "aic", "icl", "heldout", "cv"], default=None,
                   help="how --select-k chooses: BIC, AIC, ICL (lower is better), the log-likelihood of 20%% of "
                        "the rows held out, or 5-fold cross-validated log-likelihood (default: bic; MDN: cv, as a "
                        "network's parameter count says little about its flexibility)")
    f.add_argument("--expert", choices=list(EXPERTS), nargs="+", default=None, metavar="NAME",
                   help="expert family, one of " + ", ".join(EXPERTS) + " (default: linear for regression, logistic "
                        "for classification); MoE: a list of K families mixes them, e.g. --expert point_mass poisson "
                        "(a zero-inflated Poisson)")
    f.add_argument("--covariance", choices=list(COVARIANCES), default=None,
                   help="noise covariance of linear experts for several targets (default full): full, diag, "
                        "spherical, or one for all experts: tied (for one target: one variance for all), tied_diag, "
                        "tied_spherical")
    f.add_argument("--shared", nargs="+", metavar="COL", default=None,
                   help="MoE: input columns whose coefficient is common to all experts (flexmix's "
                        "FLXMRglmfix(fixed=)); the other inputs get one coefficient per expert")
    f.add_argument("--offset", metavar="COL", default=None,
                   help="a column of known offsets of the experts' linear predictor, e.g. log exposure for Poisson "
                        "rates; taken out of the inputs, and read again by predict and evaluate")
    f.add_argument("--trials", metavar="COL", default=None,
                   help="--expert binomial: the column of numbers of trials (the target counts the successes); "
                        "taken out of the inputs, and read again by predict and evaluate (default: one trial)")
    f.add_argument("--lower", metavar="COL", default=None,
                   help="censored targets: a column of lower censoring limits (y <= lower: left-censored at lower; "
                        "an empty cell: no limit); taken out of the inputs")
    f.add_argument("--upper", metavar="COL", default=None,
                   help="censored targets: a column of upper censoring limits (y >= upper: right-censored; an empty "
                        "cell: no limit; an empty target between finite limits: interval-censored)")
    f.add_argument("--missing", choices=["error", "drop"], default=None,
                   help="rows with a missing input: error (default) or drop them (the number dropped is reported); "
                        "missing coordinates of several targets are always allowed (marginalised)")
    f.add_argument("--point-mass-value", type=finite_float, default=None, metavar="V",
                   help="the value of the point_mass experts (default 0)")
    f.add_argument("--task", choices=["auto", "regression", "classification"], default="auto",
                   help="auto: classification for a text target or --expert logistic")
    f.add_argument("--depth", type=positive_int, default=None, help="HME: depth of the tree (default 2)")
    f.add_argument("--branching", type=positive_int, default=None, help="HME: experts under every gate (default 2)")
    f.add_argument("--target-noise", type=nonnegative_float, default=None, metavar="S",
                   help="MDN: noise regularisation, the sd of Gaussian noise added to the standardised targets "
                        "every epoch; about 0.1-0.2 curbs overfitting on a few hundred rows (default 0)")
    f.add_argument("--n-init", type=positive_int, default=None,
                   help="MoE, HME: starts, each a race of EM runs for linear experts; the best is kept (default 1)")
    f.add_argument("--max-iter", type=positive_int, default=None,
                   help="EM iterations (default 200) or, for --model mdn, epochs (default 1000)")
    f.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (an existing file of that name is replaced; never the input DATA)")
    big = f.add_argument_group("bigger than memory, bigger than one machine")
    _memory_options(big)
    big.add_argument("--on-bad-rows", choices=["error", "skip"], default="error",
                     help="a row with a missing or non-finite input (or an infinite target): error (default), naming "
                          "the file and the row; or skip such rows and report how many (the fit then streams)")
    big.add_argument("--checkpoint", metavar="PATH", default=None,
                     help="MoE, HME: write the model and the EM state to PATH after every iteration (atomically: a "
                          "temporary file, then a rename), so that --resume can continue a killed fit; the file is "
                          "kept after the fit (the fit then streams)")
    big.add_argument("--resume", action="store_true",
                     help="continue the fit whose --checkpoint PATH a killed run left (the same DATA and options); it "
                          "ends at the same parameters as an uninterrupted fit")
    big.add_argument("--distributed", action="store_true",
                     help="MoE, HME: one process of a torchrun job: each reads its share of DATA, statistics are summed "
                          "over the processes every pass (gloo on CPU, NCCL with --device cuda), rank 0 writes MODEL "
                          "and prints the result; e.g. 'torchrun --nproc-per-node 4 -m moekit fit DATA --target y "
                          "--distributed -o model.moekit'")
    big.add_argument("--timeout", type=positive_float, default=600.0, metavar="SECONDS",
                     help="--distributed: how long a process waits for the others (to join, or in a sum over the "
                          "processes) before the job fails with an error on every process (default 600)")
    f.set_defaults(command_module="fit")
    # Every model option defaults to None, "the estimator's own default", so that the command and Python agree
    # (tests/cli/test_defaults.py compares them); only --seed differs: 0, so that runs repeat.

    pr = sub.add_parser("predict", parents=[common], help="predict for every row of a data file",
                        description="Write one output row per input row: means, modes, quantiles, intervals, "
                                    "samples or gate probabilities. Rows with fewer modes than columns get empty cells.")
    pr.add_argument("model", help="model file written by 'moekit fit'")
    pr.add_argument("data", help="CSV or Parquet file with the model's input columns, or a folder of them")
    pr.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output .csv, .tsv or .parquet ('-': CSV on stdout); an existing file of that name is "
                         "replaced, but never the MODEL or DATA file")
    pr.add_argument("--what", choices=list(WHATS), default="mean",
                    help="what to predict (default mean; gate: the mixing weights, per leaf for a hierarchy)")
    pr.add_argument("--quantiles", type=unit_interval, nargs="+", default=[0.05, 0.5, 0.95], metavar="Q",
                    help="levels for --what quantiles, each strictly between 0 and 1 (default 0.05 0.5 0.95)")
    pr.add_argument("--level", type=unit_interval, default=0.9, help="central interval level for --what interval, strictly between 0 and 1 (default 0.9)")
    pr.add_argument("--n-samples", type=positive_int, default=10, help="draws per row for --what samples (default 10)")
    pr.add_argument("--max-modes", type=positive_int, default=3, help="mode columns for --what modes (default 3)")
    pr.add_argument("--min-weight", type=weight_fraction, default=0.01,
                    help="drop modes lighter than this, a number from 0 to 1 (default 0.01)")
    pr.add_argument("--keep", nargs="+", metavar="COL",
                    help="copy these input columns (e.g. an id) to the output; a kept column with the name of an "
                         "output column (e.g. y_mean) is an error, never overwritten")
    pr.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    _memory_options(pr, streams="DATA is read and predicted batch by batch and OUT written as it goes")
    pr.set_defaults(command_module="predict")

    ev = sub.add_parser("evaluate", parents=[common], help="goodness of fit on a data file",
                        description="Log-likelihood, NLL, RMSE of the mean and of the top mode, interval coverage.")
    ev.add_argument("model")
    ev.add_argument("data")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--level", type=unit_interval, default=0.9, help="level of the intervals whose coverage is shown, strictly between 0 and 1 "
                         "(default 0.9)")
    ev.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    ev.add_argument("--target", nargs="+", metavar="COL", help="target columns, for models saved from Python")
    ev.set_defaults(command_module="evaluate")

    rp = sub.add_parser("report", parents=[common], help="one self-contained HTML page about a model",
                        description="Data, fitted experts and gate regions, conditional density with modes, "
                                    "convergence curve and metrics, as one HTML file with embedded images.")
    rp.add_argument("model")
    rp.add_argument("data")
    rp.add_argument("-o", "--output", required=True, metavar="HTML",
                    help="the .html page to write (an existing file of that name is replaced; never the MODEL or "
                         "DATA file)")
    rp.add_argument("--title", default=None)
    rp.add_argument("--level", type=unit_interval, default=0.9,
                    help="level of the intervals shown, strictly between 0 and 1 (default 0.9)")
    rp.add_argument("--features", nargs="+", metavar="COL", help="input columns, for models saved from Python")
    rp.add_argument("--target", nargs="+", metavar="COL", help="target columns, for models saved from Python")
    rp.set_defaults(command_module="evaluate")

    inf = sub.add_parser("info", parents=[common], help="what a model file holds",
                         description="Model type, tree, sizes, training data summary and versions.")
    inf.add_argument("model")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(command_module="info")

    sm = sub.add_parser("summary", parents=[common], help="coefficients with standard errors, as R's summary()",
                        description="Every coefficient of a saved mixture of experts (MoE, HME) with its name, "
                                    "standard error, z value, p-value and confidence interval, then the "
                                    "log-likelihood, BIC, AIC and ICL. The standard errors were computed when the "
                                    "model was fitted, so no data is needed.")
    sm.add_argument("model", help="model file written by 'moekit fit' or saved from Python")
    sm.add_argument("--se", choices=["hessian", "sandwich"], default="hessian",
                    help="hessian: the observed information (default); sandwich: robust to a misspecified expert "
                         "family (bootstrap standard errors need the data: summary(se='bootstrap', X=..., y=...) in "
                         "Python)")
    sm.add_argument("--level", type=unit_interval, default=0.95,
                    help="level of the confidence intervals, strictly between 0 and 1 (default 0.95)")
    out = sm.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (the table as records, and the fit statistics)")
    out.add_argument("--csv", action="store_true", help="print the table as CSV")
    sm.set_defaults(command_module="summary")
    return p


def _memory_options(group, streams: str = "the fit streams: every EM pass reads DATA batch by batch, so memory "
                                              "is bounded by the batch, not by DATA") -> None:
    """--memory-budget and --batch-rows (fit, predict)."""
    group.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                       help="memory DATA may take: when reading it whole would take more (rows x columns x 8 bytes; a "
                            f"CSV file: its size), {streams}; sizes such as 512MB, 2GB, 1.5GiB (default: a quarter of "
                            "this machine's memory)")
    group.add_argument("--batch-rows", type=positive_int, default=65536, metavar="N",
                       help="rows per batch when streaming (default 65536)")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
          "tib": 1024**4, "pib": 1024**5}


def memory_size(s: str) -> int:
    """argparse type: a size in bytes such as ``512MB``, ``2GB``, ``1.5GiB``, ``64KB`` or ``1000`` (bytes).

    KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB powers of 1024 (case does not matter).

    Examples
    --------
    >>> memory_size("512MB"), memory_size("1.5GiB"), memory_size("1kb")
    (512000000, 1610612736, 1000)
    """
    m = _SIZE.match(s)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MB, 2GB or 1.5GiB, got {s!r}")
    v = int(float(m.group(1)) * _UNITS[unit])
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte (e.g. 512MB), got {s!r}")
    return v


def positive_float(s: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def finite_float(s: str) -> float:
    """argparse type: a finite number."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s}")
    return v


def nonnegative_float(s: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s}")
    return v


def unit_interval(s: str) -> float:
    """argparse type: a probability strictly between 0 and 1 (a quantile or interval level)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.9), got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.9), got {s}")
    return v


def weight_fraction(s: str) -> float:
    """argparse type: a weight from 0 to 1 (inclusive of 0, not of 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1 (e.g. 0.01), got {s!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1 (e.g. 0.01), got {s}")
    return v


def k_candidates(s: str) -> range | tuple:
    """argparse type for --select-k: 'A..B' or 'A-B' (a lazy ``range``: a huge range costs nothing until it is
    bounded) or a list 'A,B,C' (a sorted tuple).  Only the syntax is checked here; the bounds (1 to 64, at most
    the number of rows) are checked by ``moekit fit`` before any K is built."""
    t = s.strip()
    try:
        if ".." in t:
            a, b = t.split("..", 1)
            ks = range(int(a), int(b) + 1)
        elif "-" in t[1:]:
            a, b = t[0] + t[1:].split("-", 1)[0], t[1:].split("-", 1)[1]
            ks = range(int(a), int(b) + 1)
        else:
            ks = tuple(sorted({int(p) for p in t.split(",") if p.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: give a range such as 1..8 or a list such as 2,3,5") from None
    if not ks:
        raise argparse.ArgumentTypeError(f"{s!r} holds no number of experts; give the smaller number first, "
                                         "e.g. 1..8")
    return ks
