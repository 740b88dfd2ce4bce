"""Scale benchmark (issue 13): streaming EM from Parquet, in memory, 2 processes, all-reduce, GPU roofline.

Model: ``MixtureOfExperts(SoftmaxGate(10, 8), LinearGaussianExpert(10, n_experts=8))``
with moekit's defaults (one Newton step of the gate per M-step, exact
information, step-halving), float64.

Data: a synthetic softmax-gated linear-Gaussian model (D = 10 inputs,
K = 8 experts, scalar y), drawn file by file with ``numpy.random.default_rng
([seed, file])`` and written as Parquet (1e6 rows per file, row groups of
125,000 rows, snappy) under ``--out`` (default ``/tmp/moekit_scale``).  The
sizes are nested: N = 1e6 is the first file, 1e7 the first 10, 1e8 all 100.

Every timed fit starts from the SAME parameters: ``start.pt``, a model fitted
for 5 EM iterations (k-means start, seed 0) on ``ParquetSource(first
file).sample(100_000, seed=0)``, loaded into each run, which then calls
``fit_em(model, ..., init=None, max_iter=ITERS, tol=0)``.  One iteration is the
interval between two ``callback`` calls: the M-step (with its extra passes
over the data: the gate's Newton trial objective, step-halvings, further
Newton statistics) and the next E-step.

Subcommands:

* ``generate --rows 1e8``: write the files (bounded memory: one file in memory
  at a time; files already there are kept).  Also writes ``start.pt``.
* ``stream --sizes 1e6 1e7 1e8``: streaming EM from Parquet
  (``ParquetSource(files, batch_rows=65536)``), each size in a subprocess of its
  own: seconds per iteration, passes over the data per iteration (E-step,
  Newton objective, Newton statistics), where the time goes (reading and
  decoding Parquet into tensors, the batch checks, the rest = the model's
  compute; the checks now run only during a source's first complete pass), the process's peak RSS (``VmHWM``; target < 2 GB), and the time
  per row against N (log-log slope; 1 = linear).
* ``memory --sizes 1e6 1e7``: the same fits with the rows read into tensors
  first (``source.read_all()``, not timed) and handed to ``fit_em(model, x, y)`` (which since 89cc124
  sums them in batches of ``IN_MEMORY_BATCH_ROWS`` = 65,536 rows);
  the ratio streaming / in memory per row (target <= 1.3 at 1e7) when
  ``stream`` results of the same size are in the results folder.
  ``memory --batched`` hands ``fit_em`` the same tensors as ``ArrayBatches(x, y,
  batch_size=--batch-rows)`` instead (in memory, in batches).
* ``stream --gate-hessian bound`` (any of stream, memory, profile): the gate's fixed-curvature step,
  ``SoftmaxGate(10, 8, hessian="bound")`` (Böhning's bound), from the same start; results in
  ``stream-bound_N.json``.  moekit still checks that step with a trial-objective pass (2 passes per
  iteration).  ``--skip-trial`` (with ``--gate-hessian bound``, streamed) EMULATES, in the benchmark
  process only, the step taken without that pass (``SourcePasses.stats_fn`` returns None for such a gate,
  so ``maximize`` takes one unchecked step): 1 pass per iteration; the report checks its parameters
  against the checked bound run (the bound guarantees the step never lowers the objective).
* ``converge --rows 2e5``: EM to ``--tol`` (1e-6) in memory on ``ParquetSource(first file).sample(rows,
  seed=1)`` from ``start.pt`` with each ``--hessians`` (full, bound), against a reference optimum
  (hessian="full", ``--ref-tol`` 1e-11): iterations, time, the gap in mean log-likelihood and parameters
  at the stop, iterations to within 1e-4/1e-5/1e-6 of the optimum, and those counts times the streamed
  seconds per iteration at 1e7 (from the ``stream`` results).
* ``report``: the stream and memory tables again, from every result in
  ``OUT/results/`` (sizes run by separate commands in one table).
* ``profile --rows 1e6``: cProfile of one streamed iteration (top functions).
* ``distributed --rows 1e7``: 1 process against 2 processes (``gloo``, spawned
  by ``moekit.training.distributed.launch``, 1 torch thread each), streaming from
  Parquet, each rank reading its shard: speed-up per iteration (target >= 1.5),
  the max abs difference of the parameters, and the bytes and time of every
  all-reduce.
* ``allreduce``: the bytes all-reduced per iteration (each ``SuffStats``
  tensor's elements x 8 bytes, for the E-step and each Newton pass), the
  measured time of a ``gloo`` all-reduce of that many bytes between 2 local
  processes, and the projected efficiency on 8 and 64 machines from the
  model ``T(p) = (N/p) t_row + sum over all-reduces of t_ar(p, bytes)`` with
  ``t_ar = 2 log2(p) alpha + 2 (p-1)/p bytes / beta`` (stated network: alpha =
  50 us, beta = 10 Gbit/s; and the measured per-row time).
* ``gpu``: one EM iteration at N = 1e7, D = 32, K = 64 in float32 and float64 on
  CUDA, against the roofline (flops / peak, bytes / bandwidth); skips (exit 0)
  without CUDA.  ``--device cpu --rows 20000`` runs the same code on the CPU.
* ``all``: stream, memory, distributed, allreduce, gpu (the data must exist).

Every subcommand prints a table and writes its raw results as JSON to
``OUT/results/``.  Usage::

    nice -n 5 python benchmarks/scale.py generate --rows 1e8
    nice -n 5 python benchmarks/scale.py stream --sizes 1e6 1e7 1e8 --threads 1
    nice -n 5 python benchmarks/scale.py memory --sizes 1e6 1e7 --threads 1
    nice -n 5 python benchmarks/scale.py stream --sizes 1e7 --gate-hessian bound [--skip-trial]
    nice -n 5 python benchmarks/scale.py converge --rows 1e5
    nice -n 5 python benchmarks/scale.py distributed --rows 1e7
    python benchmarks/scale.py allreduce
    python benchmarks/scale.py gpu
    rm -rf /tmp/moekit_scale   # 1e8 rows are about 9 GB
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

D, K = 10, 8
ROWS_PER_FILE = 1_000_000
ROW_GROUP = 125_000
FEATURES = [f"x{j}" for j in range(D)]
DEFAULT_OUT = "/tmp/moekit_scale"
START_SAMPLE = 100_000
ALPHA_S = 50e-6  # assumed network latency per message (one way), seconds
BETA_BPS = 10e9 / 8  # assumed network bandwidth, bytes/s (10 Gbit/s)


def parse_n(text) -> int:
    """'1e7' -> 10000000."""
    v = float(text)
    if v != int(v) or v < 1:
        raise argparse.ArgumentTypeError(f"need a positive whole number of rows, got {text!r}")
    return int(v)


def fmt_n(n: int) -> str:
    e = int(round(math.log10(n))) if n > 0 else 0
    return f"1e{e}" if 10**e == n else f"{n:.3g}"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def vm(field: str) -> int:
    """A /proc/self/status field (VmHWM, VmRSS) in bytes; -1 where unreadable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def results_dir(out: str) -> str:
    path = os.path.join(out, "results")
    os.makedirs(path, exist_ok=True)
    return path


def save_json(out: str, name: str, obj) -> str:
    path = os.path.join(results_dir(out), name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def read_json(out: str, name: str):
    path = os.path.join(results_dir(out), name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def header(title: str) -> None:
    from _machine import machine_info

    info = machine_info()
    print(f"# moekit scale benchmark: {title}  ({' '.join([os.path.basename(sys.executable)] + sys.argv)})")
    print(f"# {info['date']}  CPU: {info['cpu']}  cores: {info['cores']}  torch {info['torch']}  "
          f"numpy {info['numpy']}  python {info['python']}")
    print(f"# moekit: {info['source']}")
    print(f"# load average at start: {load()}", flush=True)


# ====================================================================== data
def true_params(seed: int):
    """The generating model: gate rows W (K, D+1) (last row 0), expert coefficients B (K, D+1), noise sd s (K,)."""
    rng = np.random.default_rng([seed, 999_999])
    W = rng.normal(0.0, 1.0, (K, D + 1))
    W[-1] = 0.0
    B = rng.normal(0.0, 1.0, (K, D + 1))
    s = rng.uniform(0.2, 0.6, K)
    return W, B, s


def draw_file(i: int, n: int, seed: int):
    """Rows of file i: x (n, D) standard normal, the expert drawn from the softmax gate, y given the expert."""
    W, B, s = true_params(seed)
    rng = np.random.default_rng([seed, i])
    x = rng.standard_normal((n, D))
    X1 = np.hstack([np.ones((n, 1)), x])
    logits = X1 @ W.T
    logits -= logits.max(1, keepdims=True)
    g = np.exp(logits)
    g /= g.sum(1, keepdims=True)
    z = (rng.random(n)[:, None] > np.cumsum(g, 1)).sum(1).clip(0, K - 1)
    y = np.einsum("ij,ij->i", X1, B[z]) + s[z] * rng.standard_normal(n)
    return x, y


def file_path(out: str, i: int) -> str:
    return os.path.join(out, "data", f"part-{i:05d}.parquet")


def data_files(out: str, rows: int) -> list[str]:
    if rows % ROWS_PER_FILE:
        raise SystemExit(f"--rows must be a multiple of {ROWS_PER_FILE} (the rows of one file), got {rows}")
    files = [file_path(out, i) for i in range(rows // ROWS_PER_FILE)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise SystemExit(f"{len(missing)} data file(s) missing (first: {missing[0]}); run "
                         f"`python benchmarks/scale.py generate --rows {fmt_n(rows)} --out {out}` first")
    return files


def cmd_generate(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    header("generate")
    if args.rows % ROWS_PER_FILE:
        raise SystemExit(f"--rows must be a multiple of {ROWS_PER_FILE}, got {args.rows}")
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    n_files = args.rows // ROWS_PER_FILE
    t0 = time.perf_counter()
    written = 0
    for i in range(n_files):
        path = file_path(args.out, i)
        if os.path.exists(path) and pq.ParquetFile(path).metadata.num_rows == ROWS_PER_FILE:
            continue
        x, y = draw_file(i, ROWS_PER_FILE, args.seed)
        table = pa.table({**{c: x[:, j] for j, c in enumerate(FEATURES)}, "y": y})
        tmp = path + ".tmp"
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, compression="snappy")
        os.replace(tmp, path)
        written += 1
        if (i + 1) % 10 == 0 or i + 1 == n_files:
            print(f"  {i + 1}/{n_files} files, {time.perf_counter() - t0:.0f} s, load {load()}", flush=True)
    size = sum(os.path.getsize(file_path(args.out, i)) for i in range(n_files))
    W, B, s = true_params(args.seed)
    with open(os.path.join(args.out, "truth.json"), "w") as f:
        json.dump({"seed": args.seed, "D": D, "K": K, "W": W.tolist(), "B": B.tolist(), "s": s.tolist()}, f)
    print(f"{n_files} files ({written} written now), {args.rows:,} rows, {size / 1e9:.2f} GB on disk, "
          f"{time.perf_counter() - t0:.0f} s; peak RSS {vm('VmHWM') / 1e6:.0f} MB")
    make_start(args.out)
    return 0


# ===================================================================== model
def new_model(hessian: str = "full"):
    from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate

    return MixtureOfExperts(SoftmaxGate(D, K, hessian=hessian), LinearGaussianExpert(D, n_experts=K))


def source(files, batch_rows: int = 65536):
    from moekit.data import ParquetSource

    return ParquetSource(files, features=FEATURES, target="y", batch_rows=batch_rows)


def make_start(out: str) -> None:
    """start.pt: 5 EM iterations (k-means start, seed 0) on a 1e5-row sample of the first file."""
    import torch

    from moekit import fit_em

    path = os.path.join(out, "start.pt")
    if os.path.exists(path):
        print(f"start: {path} exists")
        return
    b = source(data_files(out, ROWS_PER_FILE)).sample(START_SAMPLE, seed=0)
    m = new_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_em(m, b.x, b.y, init="kmeans", random_state=0, max_iter=5, tol=0.0)
    torch.save(m.state_dict(), path)
    print(f"start: 5 EM iterations on {len(b)} sampled rows, mean log-likelihood {res.history[-1]:.6f} -> {path}")


def load_start(out: str, hessian: str = "full"):
    """The fixed start (``start.pt``) in a model whose gate takes ``hessian`` steps (the parameters are the same)."""
    import torch

    m = new_model(hessian)
    m.load_state_dict(torch.load(os.path.join(out, "start.pt"), weights_only=True))
    return m


def flat_params(m) -> np.ndarray:
    return np.concatenate([t.detach().cpu().double().reshape(-1).numpy() for t in m.state_dict().values()])


# ============================================================ instrumentation
C: dict = {}  # counters of the process


def _reset_counters() -> None:
    C.clear()
    C.update({k: 0.0 for k in ("passes", "rows", "read_s", "read_cpu", "check_s", "check_cpu", "e_calls", "e_s",
                               "e_cpu", "stats_calls", "stats_s", "stats_cpu", "obj_calls", "obj_s", "obj_cpu",
                               "ar_calls", "ar_bytes", "ar_s")})


class TimedSource:
    """A source wrapper counting passes, rows, and the seconds spent inside the wrapped source's iterator
    (reading Parquet, decoding, encoding, making tensors).  Everything else is passed through."""

    in_memory = False

    def __init__(self, src):
        self.src = src

    @property
    def n_rows(self):
        return self.src.n_rows

    @property
    def total_weight(self):
        """The wrapped source's total weight when it knows it without a pass (ParquetSource without a weight column)."""
        return getattr(self.src, "total_weight", None)

    def shard(self, rank, world_size):
        return TimedSource(self.src.shard(rank, world_size))

    def sample(self, max_rows, seed):
        return self.src.sample(max_rows, seed)

    def __iter__(self):
        C["passes"] += 1
        it = iter(self.src)
        while True:
            t, c = time.perf_counter(), time.process_time()
            try:
                b = next(it)
            except StopIteration:
                C["read_s"] += time.perf_counter() - t
                C["read_cpu"] += time.process_time() - c
                return
            C["read_s"] += time.perf_counter() - t
            C["read_cpu"] += time.process_time() - c
            C["rows"] += len(b)
            yield b


def instrument() -> None:
    """Count and time the E-step passes, the Newton passes (statistics, objective) and the batch checks.

    Patches (in this process only) ``moekit.training.em.e_step_pass``, the ``stats_fn`` / ``objective_fn`` of
    ``Passes`` (in memory) and ``SourcePasses`` (streamed), and ``CheckedSource.check``."""
    import moekit._mstep as mstep
    import moekit.training.em as em
    import moekit.training.passes as passes

    _reset_counters()
    e_orig = em.e_step_pass

    def e_step_pass(*a, **kw):
        t, c = time.perf_counter(), time.process_time()
        out = e_orig(*a, **kw)
        C["e_s"] += time.perf_counter() - t
        C["e_cpu"] += time.process_time() - c
        C["e_calls"] += 1
        return out

    em.e_step_pass = e_step_pass

    def wrap(orig, key):
        def method(self, path):
            f = orig(self, path)
            if f is None:
                return None

            def timed():
                t, c = time.perf_counter(), time.process_time()
                r = f()
                C[key + "_s"] += time.perf_counter() - t
                C[key + "_cpu"] += time.process_time() - c
                C[key + "_calls"] += 1
                return r
            return timed
        return method

    for cls in (mstep.Passes, passes.SourcePasses):
        cls.stats_fn = wrap(cls.stats_fn, "stats")
        cls.objective_fn = wrap(cls.objective_fn, "obj")
    check_orig = passes.CheckedSource.check

    def check(self, batch):
        t, c = time.perf_counter(), time.process_time()
        out = check_orig(self, batch)
        C["check_s"] += time.perf_counter() - t
        C["check_cpu"] += time.process_time() - c
        return out

    passes.CheckedSource.check = check


def instrument_all_reduce() -> None:
    """Count the calls, bytes and seconds of torch.distributed.all_reduce (waiting for the other rank included)."""
    import torch.distributed as dist

    orig = dist.all_reduce

    def all_reduce(tensor, *a, **kw):
        t = time.perf_counter()
        out = orig(tensor, *a, **kw)
        C["ar_s"] += time.perf_counter() - t
        C["ar_calls"] += 1
        C["ar_bytes"] += tensor.numel() * tensor.element_size()
        return out

    dist.all_reduce = all_reduce


def skip_trial_pass() -> None:
    """EMULATION, in this process only (moekit does not do this): a streamed M-step of a gate with
    ``hessian="bound"`` and one Newton step takes that step unchecked, without the trial-objective pass.

    ``SourcePasses.stats_fn`` returns None for such a gate, so ``moekit._mstep.maximize`` takes its
    ``stats_fn is None`` branch: one ``m_step`` from the E-step's statistics.  Böhning's curvature bounds
    the information, so the full step never lowers the gate's objective (no ridge here) and step-halving
    would never have triggered: the parameters must equal those of ``hessian="bound"`` with the check,
    which the ``stream --gate-hessian bound --skip-trial`` report verifies against the checked run."""
    import moekit.training.passes as passes

    orig = passes.SourcePasses.stats_fn

    def stats_fn(self, path):
        comp = self.live[path]
        if getattr(comp, "hessian", None) == "bound" and getattr(comp, "max_m_steps", 1) == 1:
            return None
        return orig(self, path)

    passes.SourcePasses.stats_fn = stats_fn


def variant(args) -> str:
    """The tag of a run's gate step in its result file name: '' (hessian="full"), '-bound', '-bound-skiptrial'."""
    h = getattr(args, "gate_hessian", "full")
    tag = "" if h == "full" else f"-{h}"
    return tag + ("-skiptrial" if getattr(args, "skip_trial", False) else "")


def timed_fit(model, data, iters: int, **kw) -> dict:
    """fit_em(init=None, max_iter=iters, tol=0) with a snapshot of the counters at every callback."""
    from moekit import fit_em

    snaps = []

    def cb(it, ll, m):
        snaps.append({"t": time.perf_counter(), "cpu": time.process_time(), "ll": ll, "load1": os.getloadavg()[0],
                      **C})

    t0 = time.perf_counter()
    c0 = dict(C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: ConvergenceWarning
        res = fit_em(model, *data, init=None, max_iter=iters, tol=0.0, callback=cb, **kw)
    t_end = time.perf_counter()
    if res.pruned:
        raise RuntimeError(f"experts {res.pruned} were pruned; the runs would not be comparable")
    its = []
    for a, b in zip(snaps, snaps[1:]):
        d = {k: b[k] - a[k] for k in C}
        its.append({"seconds": b["t"] - a["t"], "cpu_seconds": b["cpu"] - a["cpu"], "load1": b["load1"], **d})
    before = {k: snaps[0][k] - c0[k] for k in C}
    return {"iterations": its, "before_first_callback": {"seconds": snaps[0]["t"] - t0, **before},
            "fit_seconds": t_end - t0, "history": res.history}


# ============================================================ stream / memory
def worker(args) -> int:
    """One size in this process: streaming (mode=stream) or in memory (mode=memory); JSON to --json."""
    import torch

    torch.set_num_threads(args.threads)
    rss_import = vm("VmRSS")
    files = data_files(args.out, args.rows)
    instrument()
    if args.skip_trial:
        if args.gate_hessian != "bound" or args.mode not in ("stream", "profile"):
            raise SystemExit("--skip-trial emulates the bound step without its trial pass: it needs "
                             "--gate-hessian bound and a streamed run")
        skip_trial_pass()
    src = source(files, args.batch_rows)
    model = load_start(args.out, args.gate_hessian)
    read_all_s = None
    load0 = load()
    if args.mode in ("stream", "stream1p", "profile"):
        data = (TimedSource(src),)
    else:
        t = time.perf_counter()
        b = src.read_all()
        read_all_s = time.perf_counter() - t
        if args.mode == "membatch":  # the same rows in memory, served in batches of --batch-rows
            from moekit.data import ArrayBatches

            data = (ArrayBatches(b.x, b.y, batch_size=args.batch_rows),)
        else:
            data = (b.x, b.y)
        del b
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    out = timed_fit(model, data, args.iters)
    if args.profile:
        prof.disable()
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(args.profile)
    rss = {"VmHWM": vm("VmHWM"), "VmRSS_after_import": rss_import}
    try:
        import resource

        rss["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:
        pass
    out.update({"mode": args.mode + variant(args), "gate_hessian": args.gate_hessian, "skip_trial": args.skip_trial,
                "N": args.rows, "threads": args.threads, "batch_rows": args.batch_rows,
                "read_all_s": read_all_s, "rss": rss, "load_start": load0, "load_end": load(),
                "params": flat_params(model).tolist()})
    with open(args.json, "w") as f:
        json.dump(out, f)
    return 0


def run_worker(out: str, mode: str, n: int, iters: int, threads: int, batch_rows: int, profile: int = 0,
               hessian: str = "full", skip_trial: bool = False) -> dict:
    tag = variant(argparse.Namespace(gate_hessian=hessian, skip_trial=skip_trial))
    path = os.path.join(results_dir(out), f"{mode}{tag}_{fmt_n(n)}.json")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", "--mode", mode, "--rows", str(n), "--iters",
           str(iters), "--threads", str(threads), "--batch-rows", str(batch_rows), "--out", out, "--json", path]
    if profile:
        cmd += ["--profile", str(profile)]
    cmd += ["--gate-hessian", hessian] + (["--skip-trial"] if skip_trial else [])
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    with open(path) as f:
        r = json.load(f)
    print(f"  {mode}{tag} N={fmt_n(n)}: {[round(i['seconds'], 2) for i in r['iterations']]} s/iteration, "
          f"peak RSS {r['rss']['VmHWM'] / 1e6:.0f} MB, subprocess {time.perf_counter() - t:.0f} s, load {load()}",
          flush=True)
    return r


def summarise(r: dict) -> dict:
    """Over a worker's timed iterations: medians of every counter, and the min and median of the wall and CPU
    seconds (the machine is shared: the median and min are steadier than the mean)."""
    its = r["iterations"]
    m = {k: float(np.median([i[k] for i in its])) for k in its[0]}
    m["min_seconds"] = float(min(i["seconds"] for i in its))
    m["min_cpu_seconds"] = float(min(i.get("cpu_seconds", math.nan) for i in its))
    m["n_iters"] = len(its)
    m["passes"] = m["e_calls"] + m["obj_calls"] + m["stats_calls"]
    if "e_cpu" in its[0]:  # parts as medians of per-iteration differences (so that they add up)
        m["outside_cpu"] = float(np.median([i["cpu_seconds"] - i["e_cpu"] - i["obj_cpu"] - i["stats_cpu"] for i in its]))
        m["compute_cpu"] = float(np.median([i["e_cpu"] + i["obj_cpu"] + i["stats_cpu"] - i["read_cpu"] - i["check_cpu"]
                                            for i in its]))
    return m


def print_runs(runs: list[dict], title: str) -> None:
    print()
    print(f"### {title}")
    print()
    print("| mode | N | iterations timed | wall s / iteration (median) | wall min | CPU s / iteration (median) "
          "| us / row / iteration (wall median) | us / row / iteration (CPU) | passes / iteration "
          "(E-step + Newton objective + Newton stats) | read+decode s | batch checks s | E-step pass s "
          "| Newton passes s | peak RSS (VmHWM) | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        s = summarise(r)
        newton = s["obj_s"] + s["stats_s"]
        print(f"| {r['mode']} | {fmt_n(r['N'])} | {s['n_iters']} | {s['seconds']:.3f} | {s['min_seconds']:.3f} | "
              f"{s['cpu_seconds']:.3f} | {s['seconds'] / r['N'] * 1e6:.3f} | {s['cpu_seconds'] / r['N'] * 1e6:.3f} | "
              f"{s['passes']:.0f} ({s['e_calls']:.0f} + {s['obj_calls']:.0f} + {s['stats_calls']:.0f}) | "
              f"{s['read_s']:.3f} | {s['check_s']:.3f} | {s['e_s']:.3f} | {newton:.3f} | "
              f"{r['rss']['VmHWM'] / 1e6:.0f} MB | {s['load1']:.2f} |")
    print()
    print(f"CPU seconds per iteration by part ({title.lower()}; medians over the timed iterations): the passes over the "
          "rows (E-step pass, Newton passes) include their reading and checks of the batches, split out here")
    print()
    print("| mode | N | CPU s / iteration | E-step pass | Newton passes | of which: read + decode Parquet to tensors "
          "| of which: batch checks (CheckedSource) | of which: model compute | outside the passes (M-step solves) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        s = summarise(r)
        if "e_cpu" not in s:  # a result written by an older version of this script
            continue
        print(f"| {r['mode']} | {fmt_n(r['N'])} | {s['cpu_seconds']:.3f} | {s['e_cpu']:.3f} | "
              f"{s['obj_cpu'] + s['stats_cpu']:.3f} | {s['read_cpu']:.3f} | {s['check_cpu']:.3f} | "
              f"{s['compute_cpu']:.3f} | {s['outside_cpu']:.3f} |")


def slope(ns, ts) -> float:
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def print_stream_summary(runs: list[dict]) -> None:
    """Linearity in N, the fit's set-up passes, and the peak RSS of streamed runs."""
    runs = sorted(runs, key=lambda r: r["N"])
    ns = [r["N"] for r in runs]
    ss = [summarise(r) for r in runs]
    print()
    for key, what in (("seconds", "wall"), ("min_seconds", "wall min"), ("cpu_seconds", "CPU")):
        ts = [s[key] for s in ss]
        pp = [s[key] / s["passes"] for s in ss]
        print(f"log-log slope on N ({', '.join(fmt_n(n) for n in ns)}) of {what} s/iteration: {slope(ns, ts):.3f}; "
              f"of {what} s/pass: {slope(ns, pp):.3f} (1 = linear)")
    for r in runs:
        b = r["before_first_callback"]
        print(f"N={fmt_n(r['N'])}: before the first iteration, fit_em read the source {b['passes']:.0f} time(s) in "
              f"{b['seconds']:.1f} s (the first E-step {b['e_s']:.1f} s of it; a second read would be a total-weight "
              f"pass, which ParquetSource.total_weight avoids when there is no weight column); whole fit {r['fit_seconds']:.1f} s")
    print(f"max peak RSS {max(r['rss']['VmHWM'] for r in runs) / 1e9:.2f} GB (target < 2 GB)")


def print_compare(mem_runs: list[dict], out: str) -> None:
    """Streaming against in memory at the same N (the stream results read from the results folder)."""
    print()
    print("| N | streaming us/row/it (wall median) | in memory us/row/it (wall median) | streaming / in memory (wall) "
          "| streaming / in memory (wall min) | streaming / in memory (CPU) | max abs parameter difference "
          "| loads (stream, memory) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in sorted(mem_runs, key=lambda r: r["N"]):
        s = read_json(out, f"stream_{fmt_n(r['N'])}.json")
        if s is None:
            print(f"| {fmt_n(r['N'])} | (no stream run) | | | | | | |")
            continue
        a, b = summarise(s), summarise(r)
        same = len(s["iterations"]) == len(r["iterations"])
        diff = float(np.max(np.abs(np.array(s["params"]) - np.array(r["params"])))) if same else float("nan")
        print(f"| {fmt_n(r['N'])} | {a['seconds'] / r['N'] * 1e6:.3f} | {b['seconds'] / r['N'] * 1e6:.3f} | "
              f"{a['seconds'] / b['seconds']:.2f} | {a['min_seconds'] / b['min_seconds']:.2f} | "
              f"{a['cpu_seconds'] / b['cpu_seconds']:.2f} | "
              f"{'n/a (other iteration counts)' if not same else f'{diff:.1e}'} | {a['load1']:.2f}, {b['load1']:.2f} |")


def print_variant_compare(runs: list[dict], out: str) -> None:
    """A gate-step variant's streamed iteration against the default (hessian="full") streamed and in-memory runs
    of the same N found in the results folder, and (for the emulated skip) its parameters against the checked run."""
    print()
    print("| variant | N | passes / iteration | wall s / it (median) | CPU s / it | streamed full: wall s / it | "
          "variant / streamed full (CPU) | in memory full: wall s / it | variant / in memory full (wall, CPU) "
          "| max abs parameter difference vs the same hessian with the trial pass |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in runs:
        n, s = r["N"], summarise(r)
        full, mem = read_json(out, f"stream_{fmt_n(n)}.json"), read_json(out, f"memory_{fmt_n(n)}.json")
        f = summarise(full) if full else None
        m = summarise(mem) if mem else None
        checked = read_json(out, f"stream-{r.get('gate_hessian', 'full')}_{fmt_n(n)}.json") if r.get("skip_trial") else None
        diff = "-"
        if checked and len(checked["iterations"]) == len(r["iterations"]):
            diff = f"{float(np.max(np.abs(np.array(checked['params']) - np.array(r['params'])))):.1e}"
        print(f"| {r['mode']} | {fmt_n(n)} | {s['passes']:.0f} | {s['seconds']:.3f} | {s['cpu_seconds']:.3f} | "
              f"{f['seconds'] if f else float('nan'):.3f} | "
              f"{s['cpu_seconds'] / f['cpu_seconds'] if f else float('nan'):.2f} | "
              f"{m['seconds'] if m else float('nan'):.3f} | "
              f"{(s['seconds'] / m['seconds']) if m else float('nan'):.2f}, "
              f"{(s['cpu_seconds'] / m['cpu_seconds']) if m else float('nan'):.2f} | {diff} |")


def cmd_stream(args) -> int:
    header("stream")
    print(f"# streaming fit_em from Parquet, batch_rows={args.batch_rows}, {args.threads} torch thread(s), "
          f"{args.iters} iteration(s) at N < 1e8, {args.iters_large} at N >= 1e8; each size in a subprocess")
    runs = []
    for n in args.sizes:
        it = args.iters_large if n >= 100_000_000 else args.iters
        runs.append(run_worker(args.out, "stream", n, it, args.threads, args.batch_rows,
                               hessian=args.gate_hessian, skip_trial=args.skip_trial))
    print_runs(runs, "Streaming EM from Parquet" + (f" (gate hessian={args.gate_hessian!r}"
                                                     f"{', trial pass skipped: EMULATED' if args.skip_trial else ''})"
                                                     if variant(args) else ""))
    print_stream_summary(runs)
    if variant(args):
        print_variant_compare(runs, args.out)
    print(f"# load average at end: {load()}")
    return 0


def cmd_memory(args) -> int:
    header("memory")
    print(f"# in-memory fit_em(model, x, y): rows read with source.read_all() first (not timed), "
          f"{args.threads} torch thread(s), {args.iters} iteration(s); each size in a subprocess")
    mode = "membatch" if args.batched else "memory"
    if args.batched:
        print(f"# --batched: fit_em(model, ArrayBatches(x, y, batch_size={args.batch_rows})), the rows in memory served "
              "in batches (the E-step's weighted data of every batch kept for the Newton passes)")
    runs = [run_worker(args.out, mode, n, args.iters, args.threads, args.batch_rows, hessian=args.gate_hessian)
            for n in args.sizes]
    print_runs(runs, "In memory" + (", in batches" if args.batched else ""))
    if not args.batched:
        print_compare(runs, args.out)
    print(f"# load average at end: {load()}")
    return 0


def cmd_report(args) -> int:
    """The stream and memory tables again, from every result in the results folder."""
    import glob

    def runs(mode):
        out = []
        for path in glob.glob(os.path.join(results_dir(args.out), f"{mode}_*.json")):
            with open(path) as f:
                out.append(json.load(f))
        return sorted(out, key=lambda r: r["N"])

    st, mem, mb = runs("stream"), runs("memory"), runs("membatch")
    if st:
        print_runs(st, "Streaming EM from Parquet")
        print_stream_summary(st)
    if mem:
        print_runs(mem, "In memory")
        print_compare(mem, args.out)
    if mb:
        print_runs(mb, "In memory, in batches (ArrayBatches(x, y, batch_size))")
    return 0


def cmd_profile(args) -> int:
    header("profile")
    print(f"# cProfile of one streamed iteration at N={fmt_n(args.rows)} (plus the pre-loop passes: the "
          f"first E-step), sorted by own time")
    run_worker(args.out, "profile", args.rows, 1, args.threads, args.batch_rows, profile=args.top,
               hessian=args.gate_hessian, skip_trial=args.skip_trial)
    return 0


# ============================================================ gate step: convergence
def cmd_converge(args) -> int:
    """EM to convergence (tol) from the fixed start with each gate curvature, in memory on a seeded sample.

    In memory and streamed fits take the same iterations (equal to 1e-10, the streaming tests), so the
    iteration counts carry over to a streamed fit; the streamed time to the optimum is the count times the
    streamed seconds per iteration measured at 1e7 (``stream`` / ``stream --gate-hessian bound`` results).
    The optimum is a reference fit (hessian="full", tol=--ref-tol); "iterations to reach it" is the first
    iteration whose mean log-likelihood is within eps of the reference's."""
    import torch

    from moekit import fit_em

    header("converge")
    torch.set_num_threads(args.threads)
    files = data_files(args.out, ROWS_PER_FILE)
    b = source(files).sample(args.rows, seed=args.seed)
    print(f"# {len(b):,} rows = ParquetSource(first file).sample({args.rows}, seed={args.seed}); in memory; start "
          f"start.pt; fit_em(init=None, tol={args.tol:g}, max_iter={args.max_iter}); reference: hessian='full', "
          f"tol={args.ref_tol:g}", flush=True)

    def run(hessian, tol, max_iter):
        m = load_start(args.out, hessian)
        t, c = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_em(m, b.x, b.y, init=None, tol=tol, max_iter=max_iter)
        return {"hessian": hessian, "tol": tol, "n_iter": res.n_iter, "converged": bool(res.converged),
                "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                "history": [float(v) for v in res.history], "params": flat_params(m).tolist(),
                "load1": os.getloadavg()[0]}

    ref = run("full", args.ref_tol, args.ref_max_iter)
    ll_ref = ref["history"][-1]
    ref_hits = {}
    for eps in (1e-4, 1e-5, 1e-6, 1e-7):
        hit = [i for i, v in enumerate(ref["history"]) if v >= ll_ref - eps]
        ref_hits[f"{eps:g}"] = hit[0] if hit else None
    ref["iters_to_eps"] = ref_hits
    print(f"  reference: {ref['n_iter']} iterations, converged {ref['converged']}, mean log-likelihood "
          f"{ll_ref:.10f}, {ref['seconds']:.1f} s, load {load()}; hessian='full' reaches within "
          f"1e-4 / 1e-5 / 1e-6 / 1e-7 of it at iteration {' / '.join(str(v) for v in ref_hits.values())}",
          flush=True)
    runs = []
    for h in args.hessians:
        r = run(h, args.tol, args.max_iter)
        r["gap_ll"] = ll_ref - r["history"][-1]
        r["max_abs_param_diff_vs_ref"] = float(np.max(np.abs(np.array(r["params"]) - np.array(ref["params"]))))
        r["iters_to_eps"] = {}
        for eps in (1e-4, 1e-5, 1e-6, 1e-7):
            hit = [i for i, v in enumerate(r["history"]) if v >= ll_ref - eps]
            r["iters_to_eps"][f"{eps:g}"] = hit[0] if hit else None
        runs.append(r)
        print(f"  hessian={h}: {r['n_iter']} iterations, converged {r['converged']}, {r['seconds']:.1f} s, "
              f"load {load()}", flush=True)
    print()
    print(f"| gate hessian | iterations to tol={args.tol:g} | converged | s / iteration (wall, CPU) | total wall s | "
          "final mean log-lik | below the optimum by | max abs parameter diff vs the optimum | iterations to within "
          "1e-4 / 1e-5 / 1e-6 / 1e-7 of the optimum's mean log-lik |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|")
    for r in runs:
        it = max(r["n_iter"], 1)
        print(f"| {r['hessian']} | {r['n_iter']} | {r['converged']} | {r['seconds'] / it:.3f}, "
              f"{r['cpu_seconds'] / it:.3f} | {r['seconds']:.1f} | {r['history'][-1]:.8f} | {r['gap_ll']:.2e} | "
              f"{r['max_abs_param_diff_vs_ref']:.2e} | "
              f"{' / '.join(str(v) for v in r['iters_to_eps'].values())} |")
    # the streamed time to the optimum at 1e7 from the measured streamed seconds per iteration
    per_it = {}
    for tag, name in (("", "full"), ("-bound", "bound"), ("-bound-skiptrial", "bound, trial pass skipped (emulated)")):
        st = read_json(args.out, f"stream{tag}_1e7.json")
        if st:
            per_it[name] = summarise(st)["seconds"]
    if per_it:
        print()
        print("Streamed at N = 1e7 (wall s per iteration measured by `stream`), times the iteration counts above:")
        print()
        print("| gate step | s / iteration streamed at 1e7 | to tol | to within 1e-6 of the optimum |")
        print("|---|---:|---:|---:|")
        for name, t in per_it.items():
            r = next((r for r in runs if r["hessian"] == name.split(",")[0]), None)
            if r is None:
                continue
            e6 = r["iters_to_eps"]["1e-06"]
            print(f"| {name} | {t:.2f} | {r['n_iter']} it = {r['n_iter'] * t:.0f} s | "
                  f"{'not reached' if e6 is None else f'{e6} it = {e6 * t:.0f} s'} |")
    for r in runs + [ref]:
        r["history_len"] = len(r["history"])
    save_json(args.out, f"converge_{fmt_n(len(b))}_tol{args.tol:g}.json", {"rows": len(b), "seed": args.seed, "tol": args.tol,
                                                           "reference": {k: v for k, v in ref.items() if k != "params"},
                                                           "runs": [{k: v for k, v in r.items() if k != "params"}
                                                                    for r in runs]})
    print(f"# load average at end: {load()}")
    return 0


# =============================================================== distributed
def dist_worker(rank: int, world: int, out: str, n: int, iters: int, batch_rows: int) -> None:
    import torch.distributed as dist

    files = data_files(out, n)
    instrument()
    instrument_all_reduce()
    model = load_start(out)
    r = timed_fit(model, (TimedSource(source(files, batch_rows)),), iters, process_group=dist.group.WORLD)
    r.update({"rank": rank, "world": world, "N": n, "rss": {"VmHWM": vm("VmHWM")}, "load_end": load()})
    if rank == 0:
        r["params"] = flat_params(model).tolist()
    with open(os.path.join(results_dir(out), f"dist_{fmt_n(n)}_rank{rank}.json"), "w") as f:
        json.dump(r, f)


def cmd_distributed(args) -> int:
    from moekit.training.distributed import launch

    header("distributed")
    n = args.rows
    print(f"# N={fmt_n(n)} from Parquet, streaming, {args.iters} iteration(s); 1 process (fit_em without "
          "process_group, in a subprocess) then 2 processes (gloo, spawned, each its shard); 1 torch thread each; "
          f"{args.repeats} repeat(s), alternating the order", flush=True)
    one, two = [], []
    for rep in range(args.repeats):
        order = ("1", "2") if rep % 2 == 0 else ("2", "1")
        for which in order:
            if which == "1":
                one.append(run_worker(args.out, "stream1p", n, args.iters, 1, args.batch_rows))
            else:
                t = time.perf_counter()
                launch(dist_worker, 2, args.out, n, args.iters, args.batch_rows, threads=1, timeout_s=1800.0)
                ranks = [json.load(open(os.path.join(results_dir(args.out), f"dist_{fmt_n(n)}_rank{k}.json")))
                         for k in range(2)]
                two.append(ranks)
                print(f"  2 processes N={fmt_n(n)}: "
                      f"{[round(max(rk['iterations'][i]['seconds'] for rk in ranks), 2) for i in range(args.iters)]} "
                      f"s/iteration, {time.perf_counter() - t:.0f} s, load {load()}", flush=True)
    t1_it = [i["seconds"] for r in one for i in r["iterations"]]
    t2_it = [max(rk["iterations"][i]["seconds"] for rk in ranks) for ranks in two for i in range(args.iters)]
    t1, t2 = float(np.median(t1_it)), float(np.median(t2_it))
    load1 = [i["load1"] for r in one for i in r["iterations"]]
    load2 = [rk["iterations"][i]["load1"] for ranks in two for rk in ranks for i in range(args.iters)]
    diff = max(float(np.max(np.abs(np.array(r["params"]) - np.array(ranks[0]["params"])))) for r in one for ranks in two)
    s1 = summarise(one[0])
    ar = [summarise({"iterations": rk["iterations"]}) for ranks in two for rk in ranks]
    print()
    print("| processes | wall s / iteration (median) | every iteration | passes / iteration | all-reduces / iteration "
          "| bytes all-reduced / iteration | all-reduce s / iteration per rank (incl. waiting) | peak RSS / process "
          "| load (1 min) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    print(f"| 1 | {t1:.2f} | {[round(t, 2) for t in t1_it]} | {s1['passes']:.0f} | 0 | 0 | 0 "
          f"| {max(r['rss']['VmHWM'] for r in one) / 1e6:.0f} MB | {min(load1):.2f}-{max(load1):.2f} |")
    print(f"| 2 | {t2:.2f} | {[round(t, 2) for t in t2_it]} | {ar[0]['passes']:.0f} | {ar[0]['ar_calls']:.0f} | "
          f"{ar[0]['ar_bytes']:.0f} | {', '.join('%.3f' % a['ar_s'] for a in ar)} | "
          f"{max(rk['rss']['VmHWM'] for ranks in two for rk in ranks) / 1e6:.0f} MB | {min(load2):.2f}-{max(load2):.2f} |")
    c1 = float(np.median([i["cpu_seconds"] for r in one for i in r["iterations"]]))
    c2 = [float(np.median([i["cpu_seconds"] for i in rk["iterations"]])) for ranks in two for rk in ranks]
    print()
    print(f"speed-up per iteration (1 process / 2 processes, wall clock): {t1 / t2:.2f} by the medians, "
          f"{min(t1_it) / min(t2_it):.2f} by the fastest iterations (target >= 1.5); "
          f"max abs difference of the parameters (1 vs 2 processes): {diff:.1e}")
    print(f"CPU seconds per iteration: 1 process {c1:.2f}; each rank of 2: {', '.join('%.2f' % c for c in c2)} "
          f"(1 process / the busier rank = {c1 / max(c2):.2f}: the speed-up with a free core per process)")
    save_json(args.out, f"distributed_{fmt_n(n)}.json", {"t1": t1, "t2": t2, "speedup": t1 / t2, "max_abs_diff": diff,
                                                          "t1_iterations": t1_it, "t2_iterations": t2_it,
                                                          "load1": load1, "load2": load2, "allreduce": ar,
                                                          "cpu1": c1, "cpu2": c2})
    print(f"# load average at end: {load()}")
    return 0


# ================================================================ all-reduce
def stats_layout() -> list[tuple[str, str, int]]:
    """(pass, tensor name, elements) of every all-reduce of one EM iteration of the benchmark model."""
    import torch

    m = new_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, D, dtype=torch.float64, generator=g)
    y = torch.randn(50, dtype=torch.float64, generator=g)
    data: dict = {}
    s = m.suff_stats(x, y, data=data)

    def names(st, prefix=""):
        out = []
        for k, v in st.items():
            if hasattr(v, "items"):
                out += names(v, prefix + k + ".")
            else:
                out.append((prefix + k, int(v.numel())))
        return out
    rows = [("E-step", name, e) for name, e in names(s)]
    gate, args = data[("gate",)]
    rows.append(("Newton objective (trial point)", "gate.objective", int(gate.objective(*args).numel())))
    rows += [("Newton statistics (only with max_m_steps > 1)", "gate." + name, e)
             for name, e in names(gate.suff_stats(*args))]
    return rows


def ar_worker(rank: int, world: int, out: str, sizes: list[int], repeats: int) -> None:
    import torch
    import torch.distributed as dist

    res = {}
    for nbytes in sizes:
        t = torch.ones(max(1, nbytes // 8), dtype=torch.float64)
        for _ in range(10):
            dist.all_reduce(t)
        reps = repeats if nbytes <= 1 << 20 else max(10, repeats // 20)
        times = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        res[str(nbytes)] = {"median": float(np.median(times)), "min": float(np.min(times)), "reps": reps}
    if rank == 0:
        with open(os.path.join(results_dir(out), "allreduce_raw.json"), "w") as f:
            json.dump(res, f)


def t_allreduce(p: int, nbytes: float, alpha: float, beta: float, latency: str = "tree") -> float:
    """Model time of one all-reduce of nbytes among p machines: bandwidth term of a ring / halving-doubling
    all-reduce, 2 (p-1)/p bytes / beta, plus 2 log2(p) alpha ("tree") or 2 (p-1) alpha ("ring") latency."""
    if p == 1:
        return 0.0
    lat = 2 * math.log2(p) * alpha if latency == "tree" else 2 * (p - 1) * alpha
    return lat + 2 * (p - 1) / p * nbytes / beta


def cmd_allreduce(args) -> int:
    from moekit.training.distributed import launch

    header("allreduce")
    layout = stats_layout()
    print()
    print(f"### Statistics all-reduced per EM iteration (D={D}, K={K}, p = D+1 = {D + 1}; float64)")
    print()
    print("| pass | tensor | elements | bytes |")
    print("|---|---|---:|---:|")
    for ps, name, e in layout:
        print(f"| {ps} | {name} | {e} | {8 * e} |")
    e_bytes = 8 * sum(e for ps, _, e in layout if ps == "E-step")
    o_bytes = 8 * sum(e for ps, _, e in layout if ps.startswith("Newton objective"))
    s_bytes = 8 * sum(e for ps, _, e in layout if ps.startswith("Newton statistics"))
    print()
    print(f"E-step: {e_bytes} bytes in one flat all-reduce (formula: 8 x [1 + K + 1 + (K-1)p + ((K-1)p)^2 + K + "
          f"K p^2 + K p + K] = 8 x {e_bytes // 8}); the gate's exact information ((K-1)p)^2 = "
          f"{((K - 1) * (D + 1)) ** 2} elements is {((K - 1) * (D + 1)) ** 2 / (e_bytes / 8):.0%} of it, the experts' "
          f"K(p^2 + p + 2) = {K * ((D + 1) ** 2 + D + 3)} elements")
    print(f"each Newton trial objective (1 per iteration by default, +1 per step-halving): {o_bytes} bytes; "
          f"each further Newton statistics pass (max_m_steps > 1): {s_bytes} bytes")

    # measured per iteration (from the distributed run) or the default count
    dres = read_json(args.out, f"distributed_{fmt_n(args.rows)}.json")
    if dres:
        a = dres["allreduce"][0]
        calls, per_it_bytes = a["ar_calls"], a["ar_bytes"]
        print(f"measured in the 2-process run at N={fmt_n(args.rows)}: {calls:.0f} all-reduces and "
              f"{per_it_bytes:.0f} bytes per iteration")
    else:
        calls, per_it_bytes = 2, e_bytes + o_bytes
        print("(no distributed run in the results folder: assuming 2 all-reduces per iteration, E-step + 1 objective)")
    sizes = sorted({8, 1024, e_bytes, 65536, 1 << 20, 16 << 20})
    launch(ar_worker, 2, args.out, sizes, args.repeats, threads=1, timeout_s=600.0)
    raw = read_json(args.out, "allreduce_raw.json")
    print()
    print("### gloo all-reduce between 2 local processes (loopback TCP, same machine), 1 thread each")
    print()
    print("| bytes | median s | min s | repeats |")
    print("|---:|---:|---:|---:|")
    for nb in sizes:
        r = raw[str(nb)]
        print(f"| {nb} | {r['median']:.2e} | {r['min']:.2e} | {r['reps']} |")
    t_e = raw[str(e_bytes)]["median"]
    t_o = raw["8"]["median"]
    t_ar_meas = t_e + (calls - 1) * t_o

    # per-row time and the serial part from the streamed run at --rows (1 thread)
    srun = read_json(args.out, f"stream_{fmt_n(args.rows)}.json")
    if srun:
        s = summarise(srun)
        its = srun["iterations"]
        t_serial = float(np.median([i["seconds"] - i["e_s"] - i["obj_s"] - i["stats_s"] for i in its]))
        t_row = s["cpu_seconds"] / srun["N"]
        src = (f"measured: the CPU seconds of a streamed iteration at N={fmt_n(srun['N'])}, 1 thread (the wall clock "
               f"was {s['seconds'] / srun['N'] * 1e6:.3f} us/row at load {s['load1']:.2f} on 2 cores; the CPU time is "
               "the unloaded estimate and the smaller t_row, so the projection is the less favourable one)")
    else:
        t_row, t_serial = 2e-6, 0.0
        src = "assumed (no stream run found)"
    print()
    print(f"per-row time of one EM iteration t_row = {t_row * 1e6:.3f} us ({src}); the part of an iteration outside "
          f"the passes over the rows (M-step solves, the same on every rank): t_serial = {t_serial * 1e3:.2f} ms; "
          f"all-reduce time per iteration measured between 2 local processes: {t_ar_meas * 1e3:.3f} ms "
          f"(E-step {t_e * 1e3:.3f} ms + {calls - 1:.0f} x {t_o * 1e3:.3f} ms)")
    print()
    print("### Projection: T(p) = (N/p) t_row + t_serial + sum over the iteration's all-reduces of t_ar(p, bytes)")
    print(f"t_ar(p, b) = 2 log2(p) alpha + 2 (p-1)/p b / beta (recursive halving-doubling / Rabenseifner); the last "
          f"column takes a ring's 2 (p-1) alpha latency instead; network: alpha = {ALPHA_S * 1e6:.0f} us, "
          f"beta = {BETA_BPS * 8 / 1e9:.0f} Gbit/s; {calls:.0f} all-reduces per iteration ({e_bytes} + "
          f"{calls - 1:.0f} x 8 bytes); efficiency E(p) = T(1) / (p T(p)) with T(1) = N t_row + t_serial; p machines "
          "like this one, 1 thread each, each reading its shard from its own disk; no stragglers")
    print()
    print("| N | p | rows / machine | compute s | all-reduce (tree) | T(p) s | efficiency (tree) | "
          "efficiency (ring latency) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ar_time(p, kind="tree"):
        return (t_allreduce(p, e_bytes, ALPHA_S, BETA_BPS, kind)
                + (calls - 1) * t_allreduce(p, 8, ALPHA_S, BETA_BPS, kind))

    proj = []
    for n in (10**7, 10**8, 10**9):
        t1 = n * t_row + t_serial
        for p in (2, 8, 64):
            comp = n / p * t_row
            ar_t, ar_r = ar_time(p), ar_time(p, "ring")
            e_t, e_r = t1 / (p * (comp + t_serial + ar_t)), t1 / (p * (comp + t_serial + ar_r))
            proj.append({"N": n, "p": p, "compute_s": comp, "serial_s": t_serial, "allreduce_s": ar_t,
                         "eff_tree": e_t, "eff_ring": e_r})
            print(f"| {fmt_n(n)} | {p} | {n // p:,} | {comp:.3f} | {ar_t * 1e3:.2f} ms | {comp + t_serial + ar_t:.3f} | "
                  f"{e_t:.4f} | {e_r:.4f} |")
    print()
    for p in (8, 64):
        print(f"p={p}: communication costs {ar_time(p) * 1e3:.2f} ms per iteration (tree; ring latency "
              f"{ar_time(p, 'ring') * 1e3:.2f} ms) = the compute of {ar_time(p) / t_row:,.0f} rows; the serial part "
              f"t_serial = {t_serial / t_row:,.0f} rows")
    save_json(args.out, "allreduce.json", {"layout": layout, "e_bytes": e_bytes, "calls": calls,
                                           "bytes_per_iteration": per_it_bytes, "raw": raw, "t_row": t_row,
                                           "t_serial": t_serial,
                                           "t_ar_2local": t_ar_meas, "projection": proj})
    print(f"# load average at end: {load()}")
    return 0


# ======================================================================= GPU
def gpu_flops_bytes(n: int, d: int, k: int, itemsize: int, passes: int) -> tuple[float, float]:
    """Floating-point work and bytes read of one EM iteration (the default algorithm, see em_speed.flops_per_iteration)
    with ``passes`` passes over the rows: E-step terms + one Newton step's information, gradient and objective +
    the experts' statistics; bytes: x and y read once per pass plus the (n, K) responsibilities written and read
    once per pass (a lower bound)."""
    from em_speed import flops_per_iteration

    flops = flops_per_iteration(n, d, k)
    bytes_ = passes * n * ((d + 1) + 2 * k) * itemsize
    return flops, bytes_


PEAKS = {  # (float64 TFLOP/s without tensor cores, float32 TFLOP/s, memory TB/s), dense, from the vendors' data
    # sheets (not measured here); the first key found in the device's name is used, so specific names come first
    "H100 PCIe": (26.0, 51.0, 2.0), "H100": (34.0, 67.0, 3.35), "H200": (34.0, 67.0, 4.8),
    "A100": (9.7, 19.5, 2.0), "L4": (0.49, 30.3, 0.3),
}


def cmd_gpu(args) -> int:
    import torch

    from moekit import LinearGaussianExpert, MixtureOfExperts, SoftmaxGate, fit_em

    header("gpu")
    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark is skipped (no GPU numbers).")
        return 0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = next((v for key, v in PEAKS.items() if key in name), None)
    n, d, k = args.rows, args.gpu_d, args.gpu_k
    print(f"# device {name}; N={fmt_n(n)}, D={d}, K={k}; one EM iteration (fit_em(init=None, max_iter=1)) from a start "
          "fitted on a 1e5-row sample")
    rows = []
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator(device="cpu").manual_seed(0)
        W = torch.randn(k, d + 1, generator=g, dtype=torch.float64)
        W[-1] = 0
        B = torch.randn(k, d + 1, generator=g, dtype=torch.float64)
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        X1 = torch.cat([torch.ones(n, 1, dtype=torch.float64), x], 1)
        z = torch.multinomial(torch.softmax(X1 @ W.T, 1), 1, generator=g)[:, 0]
        y = (X1 * B[z]).sum(1) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
        del X1, z
        x, y = x.to(device=dev, dtype=dtype), y.to(device=dev, dtype=dtype)
        m = MixtureOfExperts(SoftmaxGate(d, k), LinearGaussianExpert(d, n_experts=k)).to(device=dev, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_em(m, x[:100_000], y[:100_000], init="kmeans", random_state=0, max_iter=3, tol=0.0)
            stamps = []

            def cb(it, ll, mm):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                stamps.append(time.perf_counter())
            fit_em(m, x, y, init=None, max_iter=2, tol=0.0, callback=cb)
        t = float(np.min(np.diff(stamps)))
        flops, nbytes = gpu_flops_bytes(n, d, k, x.element_size(), passes=2)
        if peak is not None:
            fl = peak[0 if dtype == torch.float64 else 1] * 1e12
            bw = peak[2] * 1e12
            t_fl, t_bw = flops / fl, nbytes / bw
            bound = max(t_fl, t_bw)
            rows.append((str(dtype), t, flops, nbytes, t_fl, t_bw, bound, t / bound))
        else:
            rows.append((str(dtype), t, flops, nbytes, None, None, None, None))
        del x, y, m
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print("| dtype | s / iteration | GFLOP / iteration | GB read (lower bound) | flops / peak s | bytes / bandwidth s "
          "| roofline s (the larger) | measured / roofline (goal <= 3) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for dt, t, fl, nb, tf, tb, bd, ratio in rows:
        f = (lambda v: "n/a" if v is None else f"{v:.4f}")
        print(f"| {dt} | {t:.4f} | {fl / 1e9:.1f} | {nb / 1e9:.2f} | {f(tf)} | {f(tb)} | {f(bd)} | "
              f"{'n/a' if ratio is None else f'{ratio:.1f}'} |")
    if peak is None:
        print(f"(no peak rates known for {name!r}: add them to PEAKS for the roofline)")
    save_json(args.out, f"gpu_{dev.type}.json", {"device": name, "rows": rows})
    return 0


# ====================================================================== main
def cmd_all(args) -> int:
    a = copy.copy(args)
    a.sizes = [10**6, 10**7, 10**8]
    cmd_stream(a)
    a.sizes = [10**6, 10**7]
    cmd_memory(a)
    a.rows = 10**7
    cmd_distributed(a)
    cmd_allreduce(a)
    cmd_gpu(a)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, rows=None):
        p.add_argument("--out", default=DEFAULT_OUT, help=f"data and results folder (default {DEFAULT_OUT})")
        p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
        p.add_argument("--batch-rows", type=int, default=65536, help="ParquetSource batch_rows (default 65536)")
        p.add_argument("--iters", type=int, default=2, help="timed EM iterations (default 2)")
        if rows is not None:
            p.add_argument("--rows", type=parse_n, default=rows)
        p.add_argument("--gate-hessian", choices=("full", "block", "bound"), default="full",
                       help="SoftmaxGate(hessian=...): the gate's Newton curvature (default full, moekit's default)")
        p.add_argument("--skip-trial", action="store_true",
                       help="with --gate-hessian bound, streamed: EMULATE (in the benchmark process only) a bound step "
                            "taken without its trial-objective pass; moekit itself still makes that pass")

    p = sub.add_parser("generate", help="write the Parquet files and the start")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--rows", type=parse_n, default=10**8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_generate)
    for name, fn, sizes in (("stream", cmd_stream, [10**6, 10**7, 10**8]), ("memory", cmd_memory, [10**6, 10**7])):
        p = sub.add_parser(name)
        common(p)
        p.add_argument("--sizes", type=parse_n, nargs="+", default=sizes)
        p.add_argument("--iters-large", type=int, default=1, help="timed iterations at N >= 1e8 (default 1)")
        if name == "memory":
            p.add_argument("--batched", action="store_true",
                           help="hand fit_em ArrayBatches(x, y, batch_size=--batch-rows) instead of one (x, y)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("report", help="print the stream and memory tables from the results folder")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("profile")
    common(p, 10**6)
    p.add_argument("--top", type=int, default=25)
    p.set_defaults(fn=cmd_profile)
    p = sub.add_parser("converge", help="iterations and time to convergence, gate hessian full vs bound")
    common(p, 200_000)
    p.add_argument("--seed", type=int, default=1, help="sample seed (default 1)")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iter", type=int, default=3000)
    p.add_argument("--ref-tol", type=float, default=1e-11)
    p.add_argument("--ref-max-iter", type=int, default=2000)
    p.add_argument("--hessians", nargs="+", default=["full", "bound"])
    p.set_defaults(fn=cmd_converge)
    p = sub.add_parser("distributed")
    common(p, 10**7)
    p.add_argument("--repeats", type=int, default=1)
    p.set_defaults(fn=cmd_distributed)
    p = sub.add_parser("allreduce")
    common(p, 10**7)
    p.add_argument("--repeats", type=int, default=400)
    p.set_defaults(fn=cmd_allreduce)
    p = sub.add_parser("gpu")
    common(p, 10**7)
    p.add_argument("--device", default="cuda")
    p.add_argument("--gpu-d", type=int, default=32)
    p.add_argument("--gpu-k", type=int, default=64)
    p.set_defaults(fn=cmd_gpu)
    p = sub.add_parser("all")
    common(p, 10**7)
    p.add_argument("--iters-large", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--gpu-d", type=int, default=32)
    p.add_argument("--gpu-k", type=int, default=64)
    p.set_defaults(fn=cmd_all)
    p = sub.add_parser("_worker")  # one size in a subprocess of its own (stream, memory, distributed's 1 process)
    common(p, 10**6)
    p.add_argument("--mode", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--profile", type=int, default=0)
    p.set_defaults(fn=worker)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
