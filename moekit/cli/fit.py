"""moekit fit: fit a conditional mixture to a table and save it, with its column schema, to a model file."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time

import numpy as np
import torch
import torch.distributed as dist

from ..estimators import HMEClassifier, HMERegressor, MDNRegressor, MoEClassifier, MoERegressor
from ..data import CSVSource, ParquetSource
from ..estimators.formula import FormulaDesign
from ..io import ModelFileError, save
from ..selection import parse_n_experts, select_n_experts
from .common import (
    EXTRAS,
    check_device,
    collect_warnings,
    extra_arrays,
    predict_frame,
    progress,
    refuse_overwriting_inputs,
    set_threads,
    with_extras,
)
from .errors import DataError, UsageError, one_line
from .formulas import formula_columns, formula_frame, formula_inputs, formula_schema, formula_targets
from .streaming import ProgressSource, distributed, memory_budget, rank_of_env, shows_progress
from .tables import (
    as_text,
    build_schema,
    check_out_folder,
    data_files,
    encode_features,
    encode_targets,
    estimated_bytes,
    is_text_type,
    read_table,
    summarize,
    text_numeric_share,
)

__all__ = ["cmd_fit"]


def _estimator_for(args, task: str, k, **columns):
    """The unfitted estimator that the options ask for, with k experts (HME: branching; MDN: components).

    Only the options given on the command line are passed (``None`` is "not given"), so every other parameter,
    ``k=None`` included, keeps the estimator's own default: the command and Python agree.  The one exception is
    the seed, 0 unless ``--seed`` says otherwise, so that runs repeat.  ``columns`` (MoE, HME) are the
    estimator's ``formula`` and ``gate_formula``, or ``expert_features`` and ``gate_features``.
    """
    kind = args.model
    names = list(getattr(args, "expert", None) or [])
    expert = names[0] if len(names) == 1 else (names or None)  # a list of K families: one per expert
    common = {"random_state": args.seed, "device": args.device or "cpu"}
    structure = _given({}, **{param: getattr(args, dest, None) for dest, (param, _) in _STRUCTURE.items()})
    if kind == "mdn":
        kw = _given(common, n_components=k, max_epochs=args.max_iter, target_noise=args.target_noise)
        return _built(MDNRegressor, dict(kw, **structure))
    kw = _given(common, n_init=args.n_init, max_iter=args.max_iter, **columns, **structure)
    if kind == "moe":
        kw = _given(kw, n_experts=k if k is not None or not isinstance(expert, list) else len(expert))
        if task == "classification":
            return _built(MoEClassifier, dict(kw, expert=expert or "logistic"))
        return _built(MoERegressor, dict(kw, expert=expert or "linear"))
    kw = _given(kw, depth=args.depth, branching=k)
    if task == "classification":
        return _built(HMEClassifier, dict(kw, expert=expert or "logistic"))
    return _built(HMERegressor, dict(kw, expert=expert or "linear"))


#: Model-structure options: ``args`` attribute -> (the estimator's parameter, the option's name).
_STRUCTURE = {"covariance": ("covariance", "--covariance"), "shared": ("shared_features", "--shared"),
              "missing": ("missing", "--missing"), "point_mass_value": ("point_mass_value", "--point-mass-value")}


def _built(cls, kw: dict):
    """``cls(**kw)``; UsageError naming the option when the estimator has no such parameter (e.g. --covariance for
    a classifier, --shared for a mixture density network)."""
    params = cls().get_params()
    for param, option in _STRUCTURE.values():
        if param in kw and param not in params:
            raise UsageError(f"{option} does not apply to {cls.__name__} (this moekit's {cls.__name__} has no "
                             f"{param!r} parameter); leave {option} out")
    return cls(**kw)


def _given(base: dict, **options) -> dict:
    """``base`` with the options that were given (not None) added."""
    return dict(base, **{name: v for name, v in options.items() if v is not None})


_ONE_TARGET = ("poisson", "binomial", "gamma", "negative_binomial", "point_mass")


def _check_fit_options(args, task: str, n_targets: int) -> None:
    names = list(args.expert or [])
    if len(names) > 1:
        if args.model != "moe":
            raise UsageError(f"--expert with several families ({' '.join(names)}) applies to --model moe: one family "
                             "per expert; give one family for --model " + args.model)
        if args.experts is not None and args.experts != len(names):
            raise UsageError(f"--expert lists {len(names)} families but --experts is {args.experts}; give one family "
                             "per expert, or leave out --experts")
        if args.select_k is not None:
            raise UsageError("--expert with several families fixes the number of experts (one per family); leave out "
                             "--select-k")
    for e in names:
        if args.model == "mdn":
            if task == "classification":
                break
            if e != "linear":
                raise UsageError(f"--expert {e} does not apply to --model mdn (its components are Gaussian)")
        if task == "classification":
            if e not in ("logistic", "mlp"):
                raise UsageError(f"--expert {e} is for regression; classification uses --expert logistic or mlp")
        else:
            if e == "logistic":
                raise UsageError("--expert logistic is for class labels; pass --task classification (or a text target)")
            if e in _ONE_TARGET and n_targets != 1:
                raise UsageError(f"--expert {e} models one target; give one --target column")
    if args.model == "mdn" and task == "classification":
        raise UsageError("--model mdn is for regression; to classify use --model moe or hme with --expert logistic")
    if task == "classification" and n_targets != 1:
        raise UsageError("classification takes exactly one --target column (the class labels)")
    _check_structure_options(args, task, n_targets, names)
    if args.model != "hme" and (args.depth is not None or args.branching is not None):
        raise UsageError("--depth and --branching apply to --model hme only")
    if args.model != "mdn" and args.target_noise:
        raise UsageError("--target-noise applies to --model mdn only")
    if args.model == "mdn" and args.n_init is not None:
        raise UsageError("--n-init applies to --model moe and hme (an MDN trains once; use --seed for another start)")


def _check_structure_options(args, task: str, n_targets: int, names: list) -> None:
    """The per-row columns and the model-structure options against the task, the model and the families."""
    extras = _extra_columns(args)
    if extras and args.model == "mdn":
        raise UsageError(f"--{next(iter(extras))} applies to --model moe and hme (a mixture density network has no "
                         "offsets, trials or censoring)")
    if extras and task == "classification":
        raise UsageError(f"--{next(iter(extras))} applies to regression (counts, amounts, measurements), not to class "
                         "labels")
    if "trials" in extras and "binomial" not in names:
        raise UsageError("--trials gives the numbers of trials of binomial experts: it needs --expert binomial")
    if ("lower" in extras or "upper" in extras) and n_targets != 1:
        raise UsageError("--lower and --upper censor one target; give one --target column")
    if getattr(args, "point_mass_value", None) is not None and "point_mass" not in names:
        raise UsageError("--point-mass-value is the value of point_mass experts: it needs --expert with point_mass, "
                         "e.g. --expert point_mass poisson")
    cols = list(extras.values())
    if len(set(cols)) != len(cols):
        raise UsageError(f"one column is given to two of --offset, --trials, --lower, --upper ({', '.join(cols)}); "
                         "each needs its own column")
    taken = set(args.target or []) | set(args.features or [])
    for kw, col in extras.items():
        if col in taken:
            role = "--target" if col in (args.target or []) else "--features"
            raise UsageError(f"column '{col}' is both --{kw} and {role}: the --{kw} column is taken out of the "
                             f"inputs and targets; leave it out of {role}")
    if extras and args.select_k is not None:
        raise UsageError(f"--select-k does not take --{next(iter(extras))} yet; fit each K with --experts K and "
                         "compare them with 'moekit summary' (BIC)")


def _extra_columns(args) -> dict:
    """``{keyword: column}`` of the per-row columns given (--offset, --trials, --lower, --upper)."""
    return {kw: getattr(args, kw) for kw in EXTRAS if getattr(args, kw, None) is not None}


def _fit_one(args, task, X, y, k, fit_params=None, **columns):
    est = _estimator_for(args, task, k, **columns)
    try:
        est.fit(X, y, **(fit_params or {}))
    except (ValueError, TypeError, FloatingPointError, RuntimeError) as e:
        what = f"a model with {k} expert(s)" if k is not None else "the model"
        raise DataError(f"fitting {what} failed: {one_line(e)}") from None
    return est


def _check_formula_options(args) -> None:
    """--formula replaces --target, --features and --categorical; --gate-formula needs it; MDNs take neither."""
    if args.formula is None:
        if args.gate_formula is not None:
            raise UsageError("--gate-formula needs --formula (the experts' formula, whose left side names the "
                             "target), e.g. --formula 'y ~ x' --gate-formula '~ x'")
        if args.target is None:
            raise UsageError("the following arguments are required: --target (or --formula 'y ~ x', whose left "
                             "side names it) (see 'moekit fit --help')")
        return
    if args.model == "mdn":
        raise UsageError("--formula applies to --model moe and hme (an MDN takes its input columns with --features)")
    if getattr(args, "missing", None) == "drop":
        raise UsageError("--missing drop works with --target and --features (a formula's terms need every value); "
                         "with --formula, remove the rows with missing inputs from the table first")
    for option, value in (("--target", args.target), ("--features", args.features),
                          ("--categorical", args.categorical)):
        if value:
            raise UsageError(f"{option} and --formula both choose columns: the formula names the target (its left "
                             "side) and the inputs (text columns are factors); leave out " + option)


def _formula_data(args, tab):
    """With --formula: the task, the DataFrame of the formulas' columns and the schema (with the design)."""
    targets, inputs = formula_columns(args.formula, args.gate_formula)
    for c in targets + inputs:
        if c not in tab.names:
            shown = ", ".join(tab.names[:20]) + (" ..." if len(tab.names) > 20 else "")
            which = "--formula" if c in targets or c in formula_columns(args.formula)[1] else "--gate-formula"
            raise DataError(f"{which} names the column '{c}', which is not in {tab.path}; its columns are: {shown}")
    task = "classification" if args.task == "classification" or "logistic" in (args.expert or []) else "regression"
    if args.task == "auto" and len(targets) == 1 and is_text_type(tab.column(targets[0]).type) and \
            text_numeric_share(as_text(tab.column(targets[0]))) < 0.5:
        raise UsageError(f"the target '{targets[0]}' of --formula holds text labels; a formula's left side is "
                         f"numeric: for class labels use --target {targets[0]} (and --features) instead of --formula")
    frame = formula_frame(tab, targets + inputs)
    try:
        design = FormulaDesign(args.formula, args.gate_formula)  # refuses terms that would run code
        design.fit(frame)
    except (ValueError, TypeError) as e:
        raise DataError(f"{tab.path}: {one_line(e)}") from None
    schema = formula_schema(design.to_dict(), task, tab)
    return task, frame, design, schema


def cmd_fit(args) -> int:
    """moekit fit: read the table, build the schema, fit (or choose K and fit), save the model file."""
    args.device = check_device(args.device)
    _check_formula_options(args)
    if args.experts is not None and args.select_k is not None:
        raise UsageError("give --experts K or --select-k RANGE, not both")
    if args.model == "hme" and args.branching is not None and (args.experts is not None or args.select_k is not None):
        raise UsageError("for --model hme, --branching, --experts and --select-k all set the branching; give one")
    if args.criterion is not None and args.select_k is None:
        raise UsageError("--criterion chooses among the K of --select-k RANGE; give --select-k too")
    out = args.output
    _check_source_options(args)
    files, kind = data_files(args.data)
    budget = memory_budget(args)
    if _streams(args, files, kind, budget):
        return _fit_source(args, files, kind, budget)
    check_out_folder(out, "model file")
    refuse_overwriting_inputs(out, {"DATA": args.data})
    tab = read_table(args.data)
    ks = _bounded_ks(args.select_k, tab.n) if args.select_k is not None else None
    set_threads(args, tab.n)
    design = None
    if args.formula is not None:
        task, frame, design, schema = _formula_data(args, tab)
        _check_fit_options(args, task, len(schema["targets"]))
        X = frame  # the estimator evaluates the formulas on it (and keeps the design)
        Xd = formula_inputs(tab, schema)
        y = formula_targets(tab, schema)
        summary_schema = dict(schema, features=schema["formula_columns"], targets=formula_columns(args.formula)[0])
    else:
        tab.require(args.target, "target")
        task = args.task
        if task == "auto":
            task = "regression"
            if "logistic" in (args.expert or []):
                task = "classification"
            elif len(args.target) == 1:
                col = tab.column(args.target[0])
                if is_text_type(col.type) and text_numeric_share(as_text(col)) < 0.5:
                    task = "classification"
        _check_fit_options(args, task, len(args.target))
        missing_ok = getattr(args, "missing", None) == "drop"
        schema = build_schema(tab, args.target, args.features, args.categorical, task,
                              exclude=set(_extra_columns(args).values()), missing_ok=missing_ok)
        if _extra_columns(args):  # before y is read: censoring limits allow an empty target between them
            schema["extras"] = _extra_columns(args)
        # fitted on the encoded columns with their names, so that the model's coefficients carry them (summary)
        X = Xd = _named(encode_features(tab, schema, missing_ok), schema["encoded_features"])
        y = encode_targets(tab, schema)
        summary_schema = schema
    extras = _extra_columns(args)
    if extras:
        schema = dict(schema, extras=extras)
        summary_schema = dict(summary_schema, extras=extras)
    fit_params = extra_arrays(tab, schema, fitting=True)
    if getattr(args, "shared", None):
        args.shared = _shared_columns(args.shared, schema)
    if task == "classification" and len(np.unique(y)) < 2:
        raise DataError(f"target column '{schema['targets'][0]}' of {tab.path} has a single class; a classifier "
                        "needs two or more")
    k = args.branching if args.model == "hme" and args.branching is not None else args.experts  # None: the default
    columns = {} if design is None else {"formula": args.formula, "gate_formula": args.gate_formula}
    selection = None
    t0 = time.perf_counter()
    with collect_warnings(args):
        if ks is None:
            bar = progress(1, "fitting", args)
            est = _fit_one(args, task, X, None if design is not None else y, k, fit_params, **columns)
            bar.update(1)
            bar.close()
        else:
            est, selection = _select_k(args, task, Xd, y, ks, design, X)
    seconds = time.perf_counter() - t0
    meta = {"cli": dict(schema, training_data=summarize(tab, summary_schema), selection=selection,
                        command="moekit " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["fit"])),
                        fit_seconds=round(seconds, 3))}
    try:
        save(est, out, metadata=meta)
    except ModelFileError as e:
        raise DataError(one_line(e)) from None
    except OSError as e:
        raise DataError(f"cannot write the model file '{out}': {one_line(e)}") from None
    if selection is not None and not args.quiet:
        print(_selection_table(selection, args.model))
    if not args.quiet:
        ll, n_used = _fitted_log_likelihood(est, Xd, y, fit_params)
        rows = f"{n_used} of {tab.n} rows (rows with missing inputs dropped)" if n_used < tab.n else f"{tab.n} rows"
        print(f"fitted {type(est).__name__} ({_size_text(est)}) on {rows}, {Xd.shape[1]} input column(s) -> "
              f"{'classes of ' if task == 'classification' else ''}{', '.join(schema['targets'])}: "
              f"log-likelihood {ll:.6g}, {seconds:.1f} s; saved to {out}")
    return 0


def _fitted_log_likelihood(est, Xd, y, fit_params) -> tuple:
    """The model's log-likelihood on the rows it was fitted on (``--missing drop``: the rows with every input), and
    how many rows that is."""
    keep = ~np.isnan(np.asarray(Xd, dtype=float)).any(axis=1)
    if keep.all():
        return with_extras(est, fit_params).score_samples(predict_frame(est, Xd), y).sum(), len(keep)
    sub = {k: v[keep] for k, v in fit_params.items()}
    ll = with_extras(est, sub).score_samples(predict_frame(est, np.asarray(Xd)[keep]), np.asarray(y)[keep])
    return ll.sum(), int(keep.sum())


def _shared_columns(names, schema) -> list:
    """--shared as the model's input names: a numeric column as itself, a categorical one as its encoded columns."""
    if "formula" in schema:
        return list(names)  # the formula's own column names; the estimator checks them
    feats = {f["name"]: f for f in schema["features"]}
    out = []
    for c in names:
        if c not in feats:
            raise UsageError(f"--shared names '{c}', which is not an input column ({', '.join(feats)}); a shared "
                             "coefficient belongs to an input of the experts")
        out += [c] if feats[c]["kind"] == "numeric" else [n for n in schema["encoded_features"]
                                                         if n.startswith(f"{c}[")]
    return out


def _named(X, names):
    """X as a DataFrame with the encoded columns' names."""
    import pandas as pd  # the estimators record the names (feature_names_in_) and name the coefficients by them

    return pd.DataFrame(X, columns=list(names))


def _selection_table(selection: dict, model: str) -> str:
    """The criterion for every K tried, in order, the chosen one marked and the skipped ones with their sizes."""
    crit = selection["criterion"]
    what = {"hme": "branching", "mdn": "number of components"}.get(model, "number of experts")
    scores, skipped = selection["scores"], selection.get("skipped") or {}
    lines = [f"{crit} by {what}:"]
    for k in sorted({int(k) for k in scores} | {int(k) for k in skipped}):
        if str(k) in scores:
            mark = "  <- chosen" if k == selection["chosen"] else ""
            lines.append(f"  K={k:>2}  {scores[str(k)]:.6g}{mark}")
        else:
            lines.append(f"  K={k:>2}  skipped: {skipped[str(k)]} parameters >= {selection['rows']} rows")
    return "\n".join(lines)


def _size_text(est) -> str:
    if hasattr(est, "n_leaves_"):
        return f"{est.n_leaves_} leaves, depth {est.depth_}"
    if hasattr(est, "n_components"):
        return f"{est.n_components} components"
    return f"{est.n_experts_} experts"


def _bounded_ks(ks, n_rows: int) -> list[int]:
    """The candidate K of --select-k (a lazy range or a tuple from the parser) as a list, once bounded.

    The largest K is checked against the rows before any list is built, so that ``1..300000000`` costs nothing;
    the range rules of :func:`moekit.selection.parse_n_experts` (1 to 64) then apply to what is left.
    """
    spec = f"{ks[0]}..{ks[-1]}" if isinstance(ks, range) else ",".join(map(str, ks))
    if ks[0] < 1:
        raise UsageError(f"--select-k {spec}: every number of experts must be at least 1, got {ks[0]}; "
                         "give a range such as 1..8")
    if ks[-1] > n_rows:
        raise UsageError(f"--select-k {spec} asks for up to {ks[-1]} experts but the data has {n_rows} rows; "
                         f"every K must be at most the number of rows: give a range such as 1..{max(1, min(8, n_rows))}")
    try:
        return parse_n_experts(spec)
    except ValueError as e:
        raise UsageError(f"--select-k {one_line(e)}") from None


_SELECTION_OPTIONS = ((re.compile(r"^ks: "), "--select-k: "), (re.compile(r"\bcriterion='(\w+)'"), r"--criterion \1"))


def _in_option_names(msg: str) -> str:
    """A message of :func:`moekit.selection.select_n_experts` with its parameters named as the options that set
    them (``ks`` is --select-k, ``criterion='heldout'`` is --criterion heldout)."""
    for pattern, option in _SELECTION_OPTIONS:
        msg = pattern.sub(option, msg)
    return msg


def _select_k(args, task, X, y, ks, design=None, frame=None):
    """By --criterion; by default BIC on the whole data (MoE, HME) or 5-fold cross-validated log-likelihood (MDN:
    its parameter count says little about its flexibility), the chosen K refitted on all rows for the held-out
    criteria.

    With a formula design, K is chosen on the design's columns (``X``; the experts and the gate see the
    formulas' columns), and the chosen K is fitted again on ``frame`` with the formulas, so that the model keeps
    its design (the same columns and seed: the same fit).
    """
    criterion = args.criterion or ("cv" if args.model == "mdn" else "bic")
    n_fits = {"heldout": len(ks) + 1, "cv": 5 * len(ks) + 1}.get(criterion, len(ks)) + (design is not None)
    bar = progress(n_fits, "choosing K", args)
    tried: list = []
    columns = {} if design is None else {"expert_features": list(design.expert_features),
                                         "gate_features": list(design.gate_features)}

    def on_fit(k):
        if tried:
            bar.update(1)
        tried.append(k)
        bar.set_postfix_str(f"K={k}")

    try:
        res = select_n_experts(lambda k: _estimator_for(args, task, k, **columns), X, y, ks,
                               criterion=criterion, random_state=args.seed, callback=on_fit)
    except (ValueError, TypeError, FloatingPointError, RuntimeError) as e:
        which = f"fitting a model with {tried[-1]} expert(s)" if tried else f"choosing K by {criterion}"
        raise DataError(f"{which} failed: {_in_option_names(one_line(e))}") from None
    est = res.estimator
    if design is not None:
        bar.update(1)
        est = _fit_one(args, task, frame, None, res.n_experts, formula=args.formula, gate_formula=args.gate_formula)
    bar.update(1)
    bar.close()
    scores = {str(k): v for k, v in res.scores.items()}
    skipped = {str(k): int(p) for k, p in getattr(res, "skipped", {}).items()}
    return est, {"criterion": res.description, "scores": scores, "chosen": int(res.n_experts), "skipped": skipped,
                 "rows": len(X)}


# ---------------------------------------------------------------------------------------------------------------
# Bigger than memory, bigger than one machine: the fit over a source of batches (moekit.data), streamed when the
# data exceed --memory-budget, as one process of a torchrun job (--distributed), with --checkpoint / --resume.

def _check_source_options(args) -> None:
    """The options of streamed and distributed fits, checked before any data is read (the same on every rank)."""
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume continues the fit whose --checkpoint PATH a killed run left; give --checkpoint "
                         "PATH too (the same as that run's)")
    world = os.environ.get("WORLD_SIZE")
    if not args.distributed and world is not None and world.isdigit() and int(world) > 1:
        raise UsageError(f"this process is one of WORLD_SIZE={world} processes of a torchrun job, but --distributed is "
                         "not given (each would fit alone and write MODEL): add --distributed")
    if args.checkpoint is not None:
        if args.checkpoint in (args.output, args.data) or os.path.realpath(args.checkpoint) in \
                (os.path.realpath(args.output), os.path.realpath(args.data)):
            raise UsageError(f"--checkpoint {args.checkpoint} is the model file or DATA; give the checkpoint a file of "
                             "its own, e.g. model.ckpt")
        if args.resume and not os.path.exists(args.checkpoint):
            raise DataError(f"--resume: the checkpoint '{args.checkpoint}' does not exist (the killed run had not "
                            "finished an iteration, or the path differs); run again without --resume")
        if not args.resume:
            check_out_folder(args.checkpoint, "checkpoint")


def _streams(args, files: list, kind: str, budget: int) -> bool:
    """Whether the fit reads DATA as a source of batches: its data exceed the memory budget, or --distributed,
    --checkpoint or --on-bad-rows skip is given (those work on sources)."""
    if args.distributed or args.checkpoint is not None or args.on_bad_rows == "skip":
        return True
    return estimated_bytes(files, kind) > budget


def _refuse_for_sources(args, why: str) -> None:
    """Options that need the whole table in memory, refused for a fit over a source (``why`` says which)."""
    if args.formula is not None:
        raise UsageError(f"--formula reads the whole table in memory, but {why}; give --target and --features (text "
                         "columns are one-hot encoded), or a larger --memory-budget")
    if args.select_k is not None:
        raise UsageError(f"--select-k fits every K on the table in memory, but {why}; fit each K with --experts K "
                         "and compare them with 'moekit summary' (BIC)")
    if args.categorical:
        raise UsageError(f"--categorical works on a table read in memory, but {why}; write those columns as text "
                         "(they are then categories)")
    if args.missing == "drop":
        raise UsageError(f"--missing drop works on a table read in memory, but {why}; use --on-bad-rows skip, which "
                         "skips rows with missing or non-finite inputs and reports how many")
    if args.model == "mdn" and args.checkpoint is not None:
        raise UsageError("--checkpoint follows EM (--model moe or hme); a mixture density network's training (--model "
                         "mdn, minibatch gradients) cannot be checkpointed: leave out --checkpoint")
    if args.checkpoint is not None and args.n_init not in (None, 1):
        raise UsageError(f"--checkpoint follows one start of EM; --n-init {args.n_init} runs {args.n_init}: leave out "
                         "--n-init (or fit each start with its own --seed and --checkpoint)")


def _why_source(args, budget: int) -> str:
    if args.distributed:
        return "--distributed reads DATA in shares, batch by batch"
    if args.checkpoint is not None:
        return "--checkpoint fits DATA as a source of batches"
    if args.on_bad_rows == "skip":
        return "--on-bad-rows skip reads DATA batch by batch"
    return f"DATA exceeds --memory-budget ({budget} bytes) and is streamed"


def _source_of(args, files: list, kind: str):
    """The source of batches of DATA (moekit.data.ParquetSource or CSVSource) with the columns the options name."""


    tsv = [f for f in files if f.lower().endswith(".tsv")]
    if tsv:
        raise DataError(f"a streamed fit reads Parquet files and comma-separated .csv files, but {tsv[0]} is "
                        "tab-separated; convert it to Parquet (or .csv), or fit it in memory (a larger --memory-budget)")
    cls = ParquetSource if kind == "parquet" else CSVSource
    extras = _extra_columns(args)
    try:
        return cls(files if os.path.isdir(args.data) else files[0], features=args.features, target=list(args.target),
                   batch_rows=args.batch_rows, dtype=torch.float64, device=args.device or "cpu",
                   on_bad_rows=args.on_bad_rows, **extras)
    except ValueError as e:
        raise DataError(one_line(e)) from None


_SOURCE_OPTIONS = (("on_bad_rows='skip'", "--on-bad-rows skip"), ("memory_budget", "--memory-budget"),
                   ("n_init=", "--n-init "), ("max_iter=", "--max-iter "))


def _in_source_options(msg: str) -> str:
    """A message of the estimators or the sources with their parameters named as the options that set them."""
    for param, option in _SOURCE_OPTIONS:
        msg = msg.replace(param, option)
    return msg


def _fit_source(args, files: list, kind: str, budget: int) -> int:
    """moekit fit over a source of batches: streamed when the data exceed --memory-budget, in shares under torchrun
    (--distributed: rank 0 writes MODEL and prints), with --checkpoint / --resume."""
    _refuse_for_sources(args, _why_source(args, budget))
    if args.target is None:  # --formula is refused above, so --target is required
        raise UsageError("the following arguments are required: --target (see 'moekit fit --help')")
    if args.model == "mdn" and args.distributed and estimated_bytes(files, kind) > budget:
        raise UsageError(f"--model mdn --distributed trains every process on the whole of DATA in memory "
                         f"(DistributedDataParallel), but DATA exceeds --memory-budget ({budget} bytes); give a larger "
                         "--memory-budget, or fit without --distributed (one process, streamed minibatches)")
    if args.distributed:

        rank = rank_of_env()[0]
    else:
        rank = 0
    if rank == 0:
        check_out_folder(args.output, "model file")
        refuse_overwriting_inputs(args.output, {"DATA": args.data})
    with (distributed(args) if args.distributed else contextlib.nullcontext()) as group:
        if rank != 0:
            args.quiet = True  # other ranks print nothing but their errors
        return _fit_source_in(args, files, kind, budget, group)


def _fit_source_in(args, files: list, kind: str, budget: int, group) -> int:
    """:func:`_fit_source` once the process group (if any) is joined: the source, the schema, the fit, MODEL."""
    rank = getattr(args, "rank", 0)
    source = _source_of(args, files, kind)
    task = args.task
    if task == "auto":
        task = "classification" if source.target_levels is not None or "logistic" in (args.expert or []) \
            else "regression"
    if task == "classification" and source.target_levels is not None and len(source.target_levels) < 2:
        raise DataError(f"target column '{source.target_names[0]}' of {args.data} has a single class; a classifier "
                        "needs two or more")
    if task == "regression" and source.target_levels is not None:
        raise DataError(f"target column '{source.target_names[0]}' of {args.data} holds text (class labels); "
                        "regression needs numbers: fix the column, or pass --task classification")
    _check_fit_options(args, task, len(source.target_names))
    schema = {"features": [dict(f) for f in source.encoding["features"]],
              "encoded_features": list(source.feature_names), "targets": list(source.target_names), "task": task}
    extras = _extra_columns(args)
    if extras:
        schema["extras"] = extras
    if getattr(args, "shared", None):
        args.shared = _shared_columns(args.shared, schema)
    set_threads(args, source.n_rows)
    k = args.branching if args.model == "hme" and args.branching is not None else args.experts
    est = _estimator_for(args, task, k)
    data = ProgressSource(source, shows_progress(args))
    kw = {"memory_budget": budget}
    if group is not None:
        kw["process_group"] = group
    if args.checkpoint is not None:
        kw.update(checkpoint=args.checkpoint, resume=bool(args.resume))
    t0 = time.perf_counter()
    with collect_warnings(args):
        try:
            est.fit(data, **kw)
        except (ValueError, TypeError, FloatingPointError) as e:
            raise DataError(f"fitting the model failed: {_in_source_options(one_line(e))}") from None
        except RuntimeError as e:
            if group is not None:
                raise  # the distributed context tells a failure of another process from one of this process
            raise DataError(f"fitting the model failed: {_in_source_options(one_line(e))}") from None
    seconds = time.perf_counter() - t0
    skipped = data.skipped
    if group is not None:

        on = args.device if args.device and str(args.device).startswith("cuda") else "cpu"  # NCCL sums on the GPU
        t = torch.tensor([float(skipped)], dtype=torch.float64, device=on)
        dist.all_reduce(t, group=group)
        skipped = int(t.item())
    n_used = int(source.n_rows) - skipped
    if rank == 0:
        name = os.path.basename(os.path.normpath(args.data))
        meta = {"cli": dict(schema, training_data={"file": name, "rows": n_used, "columns": {}},
                            command="moekit " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["fit"])),
                            fit_seconds=round(seconds, 3))}
        try:
            save(est, args.output, metadata=meta)
        except ModelFileError as e:
            raise DataError(one_line(e)) from None
        except OSError as e:
            raise DataError(f"cannot write the model file '{args.output}': {one_line(e)}") from None
    if group is not None:

        dist.barrier(group=group)  # every rank ends (exit code 0) only once rank 0 has written MODEL
    if not args.quiet:
        how = f"{'streamed' if data.passes else 'read in memory'}"
        if group is not None:
            how += f" by {args.world_size} processes"
        rows = f"{n_used} rows" + (f" ({skipped} bad rows skipped: --on-bad-rows skip)" if skipped else "")
        parts = f" of {len(files)} files" if len(files) > 1 else ""
        ll = float(getattr(est, "log_likelihood_", float("nan")))
        print(f"fitted {type(est).__name__} ({_size_text(est)}) on {rows}{parts}, {how}, "
              f"{len(schema['encoded_features'])} input column(s) -> "
              f"{'classes of ' if task == 'classification' else ''}{', '.join(schema['targets'])}: "
              f"log-likelihood {ll:.6g}, {seconds:.1f} s; saved to {args.output}")
    return 0
