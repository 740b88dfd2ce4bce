"""moekit predict: one output row per input row (means, modes, quantiles, intervals, samples or gate weights)."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ..distributions import flatten_leaves, marginal
from ..inference import find_modes
from .common import (
    PREDICTION_EXTRAS,
    check_device,
    extra_arrays,
    collect_warnings,
    load_model,
    model_inputs,
    refuse_overwriting_inputs,
    say,
    schema_of,
    set_threads,
    target_names,
    with_extras,
)
from .errors import DataError, UsageError, one_line
from .streaming import memory_budget, shows_progress
from .tables import (
    as_text,
    check_out_folder,
    is_numeric_type,
    numeric_column,
    out_kind,
    ChunkTable,
    TableWriter,
    data_files,
    estimated_bytes,
    read_table,
    write_table,
)

__all__ = ["cmd_predict"]


def cmd_predict(args) -> int:
    """moekit predict: load the model, encode the table as in training, write the asked-for columns."""
    dev = check_device(args.device)
    if args.output != "-":
        out_kind(args.output)
        check_out_folder(args.output, "output")
        refuse_overwriting_inputs(args.output, {"MODEL": args.model, "DATA": args.data})
    est, info = load_model(args.model, dev)
    schema = schema_of(est, info, args)
    clf = schema["task"] == "classification"
    if clf and args.what in ("modes", "quantiles", "interval"):
        raise UsageError(f"--what {args.what} is for regression models; this model classifies "
                         "(use --what mean for labels and probabilities, samples or gate)")
    files, kind = data_files(args.data)
    if estimated_bytes(files, kind) > memory_budget(args):
        return _predict_streamed(args, est, schema, files, kind)
    tab = read_table(args.data)
    set_threads(args, tab.n)
    if args.keep:
        tab.require(args.keep, "--keep")
    X = model_inputs(est, tab, schema)
    # an offset or trials column of the new rows (the gate never sees them)
    extras = {} if args.what == "gate" else extra_arrays(tab, schema, PREDICTION_EXTRAS)
    predicted: dict = {}
    try:
        with torch.no_grad(), collect_warnings(args):
            _predict_columns(args, with_extras(est, extras), schema, X, predicted)
    except (ValueError, TypeError) as e:
        raise DataError(f"prediction failed: {one_line(e)}") from None
    cols = _kept_columns(args, tab, predicted)
    cols.update(predicted)
    write_table(cols, args.output)
    if args.output != "-":
        say(args, f"wrote {tab.n} rows x {len(cols)} columns ({args.what}) to {args.output}")
    return 0


def _record_batches(files: list, kind: str, schema: dict, batch_rows: int):
    """``(file, first row in the file, record batch)`` of every file in order, at most ``batch_rows`` rows each.

    CSV files are read block by block with the model's numeric inputs (and offsets, trials) as numbers and its
    categorical inputs as text, so that a block's guess of a type never differs from another's.
    """
    types = {}
    for f in schema.get("features", []):
        types[f["name"]] = pa.float64() if f["kind"] == "numeric" else pa.string()
    for col in (schema.get("extras") or {}).values():
        types[col] = pa.float64()
    for path in files:
        first = 0
        try:
            if kind == "parquet":
                reader = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
            else:
                delim = "\t" if path.lower().endswith(".tsv") else ","
                reader = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim),
                                       convert_options=pcsv.ConvertOptions(column_types=types))
            for rb in reader:
                for lo in range(0, rb.num_rows, batch_rows):
                    part = rb.slice(lo, batch_rows)
                    yield path, first, part
                    first += part.num_rows
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            msg = one_line(e)
            if "Empty CSV file" in msg:
                raise DataError(f"data file '{path}' is empty; it needs a header row and at least one data row") from None
            raise DataError(f"cannot read '{path}' as {kind.upper() if kind == 'csv' else 'Parquet'} (near row "
                            f"{first + 1}): {msg[:300]}") from None


def _n_rows(files: list, kind: str):
    """The rows of Parquet files (from their metadata), None for CSV (unknown until read)."""
    if kind != "parquet":
        return None
    return int(sum(pq.read_metadata(f).num_rows for f in files))


def _predict_streamed(args, est, schema: dict, files: list, kind: str) -> int:
    """moekit predict over DATA larger than --memory-budget: read and predicted batch by batch, OUT written as it
    goes (a Parquet file with pyarrow's ParquetWriter), renamed into place only when every row is done."""

    set_threads(args, args.batch_rows)
    bar = tqdm(total=_n_rows(files, kind), desc="predicting", unit="rows", unit_scale=True,
               disable=not shows_progress(args), file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
    n = 0
    try:
        with TableWriter(args.output) as out, torch.no_grad(), collect_warnings(args):
            for i, (path, first, rb) in enumerate(_record_batches(files, kind, schema, args.batch_rows)):
                tab = ChunkTable(pa.Table.from_batches([rb]), path, kind, first)
                if args.keep:
                    tab.require(args.keep, "--keep")
                X = model_inputs(est, tab, schema)
                extras = {} if args.what == "gate" else extra_arrays(tab, schema, PREDICTION_EXTRAS)
                piece = args
                if i and args.what == "samples":  # each batch its own draws (the first's are the in-memory ones)
                    piece = copy.copy(args)
                    piece.seed = int(np.random.SeedSequence([args.seed, i]).generate_state(1)[0]) % (2**31 - 1)
                predicted: dict = {}
                try:
                    _predict_columns(piece, with_extras(est, extras), schema, X, predicted)
                except (ValueError, TypeError) as e:
                    raise DataError(f"prediction failed on rows {first + 1} to {first + tab.n} of {path}: "
                                    f"{one_line(e)}") from None
                cols = _kept_columns(args, tab, predicted)
                cols.update(predicted)
                out.write(cols)
                n += tab.n
                bar.update(tab.n)
    finally:
        bar.close()
    if args.output != "-":
        say(args, f"wrote {n} rows ({args.what}), predicted batch by batch, to {args.output}")
    return 0


def _kept_columns(args, tab, predicted: dict) -> dict:
    """The --keep columns, in order; UsageError for one with the name of an output column (never overwritten)."""
    clash = [c for c in dict.fromkeys(args.keep or []) if c in predicted]
    if clash:
        raise UsageError(f"--keep {clash[0]}: the kept input column '{clash[0]}' has the name of an output column "
                         f"of --what {args.what} (the outputs are {', '.join(predicted)}); leave it out of --keep or "
                         "rename it in the data")
    cols: dict = {}
    for c in dict.fromkeys(args.keep or []):
        col = tab.column(c)
        cols[c] = numeric_column(tab, c, "kept") if is_numeric_type(col.type) else as_text(col)
    return cols


def _predict_columns(args, est, schema, X, cols) -> None:
    if args.what == "gate" and getattr(est, "extras_required_", ()):  # the gate needs no offsets or trials
        w = np.asarray(est.predict_gate(X))
        for k in range(w.shape[1]):
            cols[f"leaf{k}" if hasattr(est, "n_leaves_") else f"gate{k}"] = w[:, k]
        return
    dist = est.predict_distribution(X)
    clf = schema["task"] == "classification"
    tnames = target_names(schema, dist)
    what = args.what
    if what == "mean":
        if clf:
            p = est.predict_proba(X)
            cols[f"{tnames[0]}_predicted"] = est.predict(X)
            for j, c in enumerate(est.classes_):
                cols[f"p_{c}"] = p[:, j]
            return
        m = dist.mean.cpu().numpy().reshape(len(X), -1)
        for j, t in enumerate(tnames):
            cols[f"{t}_mean"] = m[:, j]
        return
    if what == "gate":
        lw = torch.cat([g.log_weights for g in flatten_leaves(dist)], dim=1)
        nested = lw.shape[1] != dist.log_weights.shape[1] or hasattr(est, "n_leaves_")
        w = lw.exp().cpu().numpy()
        for k in range(w.shape[1]):
            cols[f"leaf{k}" if nested else f"gate{k}"] = w[:, k]
        return
    if what == "samples":
        s = est.sample_y(X, n_samples=args.n_samples, random_state=args.seed)
        if clf:
            s = est.classes_[s.astype(int)]
        s = s.reshape(len(X), -1, args.n_samples) if s.ndim == 3 else s[:, None, :]
        for j, t in enumerate(tnames):
            for i in range(args.n_samples):
                cols[f"{t}_sample{i + 1}"] = s[:, j, i]
        return
    if what == "quantiles" or what == "interval":
        qs = list(args.quantiles) if what == "quantiles" else [(1 - args.level) / 2, (1 + args.level) / 2]
        for j, t in enumerate(tnames):
            try:
                mj = marginal(dist, j)
            except TypeError as e:
                raise UsageError(f"--what {what}: {one_line(e)}") from None
            q = mj.quantiles(qs).cpu().numpy()
            if what == "interval":
                cols[f"{t}_lower"], cols[f"{t}_upper"] = q[:, 0], q[:, 1]
            else:
                for i, lv in enumerate(qs):
                    cols[f"{t}_q{lv:g}"] = q[:, i]
        return
    # modes
    try:
        m = find_modes(dist, max_modes=args.max_modes, min_weight=args.min_weight).numpy()
    except TypeError as e:
        raise UsageError(f"--what modes: {one_line(e)}") from None
    modes = m.modes if m.modes.ndim == 3 else m.modes[:, :, None]
    cols["n_modes"] = np.asarray(m.n_modes).astype(np.int64)
    for i in range(modes.shape[1]):
        for j, t in enumerate(tnames):
            cols[f"{t}_mode{i + 1}"] = modes[:, i, j]
        cols[f"mode{i + 1}_weight"] = m.weights[:, i]
