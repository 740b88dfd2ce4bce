"""Bigger than memory, bigger than one machine: what ``moekit fit`` and ``moekit predict`` need to stream a data
set and to run as one process of a torchrun job.

- :func:`memory_budget`: ``--memory-budget`` or a quarter of this machine's memory.
- :class:`ProgressSource`: a source of batches (:mod:`moekit.data`) that shows one progress bar per pass over
  the data (rows and rows/s), and counts the rows that ``--on-bad-rows skip`` skipped.
- :func:`distributed`: the torch.distributed process group of a torchrun job (``--distributed``): joined with a
  timeout, left at the end, every failure one line on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sys

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .errors import CLIError, DataError, UsageError, one_line

__all__ = ["ProgressSource", "TORCHRUN_ENV", "distributed", "memory_budget", "shows_progress"]

#: What torchrun (and torch.distributed's env:// rendezvous) sets for each process.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_FALLBACK_BUDGET = 2 * 1024**3


def memory_budget(args) -> int:
    """``--memory-budget`` in bytes, or a quarter of the physical memory (2 GiB where it cannot be read)."""
    given = getattr(args, "memory_budget", None)
    if given is not None:
        return int(given)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_BUDGET


def shows_progress(args) -> bool:
    """Progress bars: on a terminal or with --progress; never with --quiet, nor on a rank other than 0."""
    if getattr(args, "quiet", False) or getattr(args, "rank", 0) != 0:
        return False
    return bool(getattr(args, "progress", False) or sys.stderr.isatty())


class ProgressSource:
    """A source of batches that shows a progress bar for every pass over it (tqdm on stderr, rows and rows/s).

    Everything else is the wrapped source's: its attributes, :meth:`sample` and :meth:`read_all` (no bar); its
    :meth:`shard` is wrapped too, so a rank's passes over its own rows show.  After every complete pass the rows
    that the source skipped (``on_bad_rows="skip"``) are recorded in :attr:`skipped` (shared with the shards).

    Parameters
    ----------
    source : a source of batches (:mod:`moekit.data`)
    show : bool
        Whether to draw the bars.

    Shapes
    ------
    The batches are the source's: x (b, d_x), y (b,) or (b, d_y), weight (b,).

    Examples
    --------
    >>> import torch
    >>> from moekit.data import ArrayBatches
    >>> src = ProgressSource(ArrayBatches(torch.zeros(5, 1), torch.zeros(5), batch_size=2), show=False)
    >>> [len(b) for b in src], src.n_rows, src.passes
    ([2, 2, 1], 5, 1)
    """

    def __init__(self, source, show: bool, _state: dict | None = None):
        self._source = source
        self._show = show
        self._state = {"passes": 0, "skipped": 0} if _state is None else _state

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._source, name)

    @property
    def passes(self) -> int:
        """Complete passes over the data so far."""
        return self._state["passes"]

    @property
    def skipped(self) -> int:
        """Rows skipped as bad in the last complete pass (0 unless ``on_bad_rows="skip"``)."""
        return self._state["skipped"]

    def __iter__(self):

        self._state["passes"] += 1
        n = getattr(self._source, "n_rows", None)
        bar = tqdm(total=n, desc=f"pass {self._state['passes']}", unit="rows", unit_scale=True, disable=not self._show,
                   file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5)
        try:
            for batch in self._source:
                bar.update(len(batch))
                yield batch
        finally:
            bar.close()
        self._state["skipped"] = int(getattr(self._source, "skipped_rows_last_pass", 0) or 0)

    def shard(self, rank: int, world_size: int):
        """The wrapped source's shard, with bars."""
        return ProgressSource(self._source.shard(rank, world_size), self._show, self._state)

    def sample(self, max_rows: int, seed: int):
        """The wrapped source's start sample."""
        return self._source.sample(max_rows, seed)

    def read_all(self):
        """Every row of the wrapped source, read whole (no bar; the skipped rows are recorded)."""
        out = self._source.read_all()
        self._state["skipped"] = int(getattr(self._source, "skipped_rows_last_pass", 0) or 0)
        return out


class Terminated(Exception):
    """SIGTERM (torchrun stops the other processes of a job when one fails)."""


def _world_from_env() -> tuple[int, int, int]:
    missing = [v for v in TORCHRUN_ENV if not os.environ.get(v)]
    if missing:
        raise UsageError("--distributed runs as one process of a torchrun job, which sets " + ", ".join(TORCHRUN_ENV)
                         + f" (missing here: {', '.join(missing)}); launch it with 'torchrun --nproc-per-node N -m "
                         "moekit fit DATA --target y --distributed -o model.moekit'")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError(f"--distributed: RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} must "
                         "be whole numbers (torchrun sets them)") from None
    if not (world >= 1 and 0 <= rank < world):
        raise UsageError(f"--distributed: RANK={rank} is not a rank of WORLD_SIZE={world} (torchrun sets them)")
    return rank, world, local


def rank_of_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` that torchrun set (UsageError outside torchrun)."""
    return _world_from_env()


def is_peer_failure(e: BaseException) -> bool:
    """Whether an error of a collective operation came from another process (it left, failed or timed out)."""

    kinds = tuple(k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None)) if k)
    if kinds and isinstance(e, kinds):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in msg for w in ("gloo", "nccl", "connection", "timed out", "timeout",
                                                                   "peer", "socket", "broken pipe", "store"))


@contextlib.contextmanager
def distributed(args):
    """Join the torchrun job's process group (gloo on CPU, NCCL for CUDA) for the block, and leave it after.

    Sets ``args.rank`` and ``args.world_size``; with a CUDA device each process takes ``cuda:LOCAL_RANK``.  Yields
    the group (``torch.distributed.group.WORLD``).  Any error in the block becomes a :class:`DataError` (one line,
    exit code 1) that names this process's rank; an error of a sum over the processes, raised because another one
    failed or left, says so.  SIGTERM (torchrun stopping the job) is one too.
    """

    rank, world, local = _world_from_env()
    args.rank, args.world_size = rank, world
    who = f"rank {rank} of {world}"
    cuda = bool(args.device) and str(args.device).startswith("cuda")
    if cuda:
        args.device = f"cuda:{local}"
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"

    def on_sigterm(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_sigterm)
    joined = False
    try:
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(args.timeout)), rank=rank,
                                    world_size=world)
        except (RuntimeError, ValueError, OSError) as e:
            raise DataError(f"{who}: could not join the torchrun job ({backend} process group at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, --timeout "
                            f"{args.timeout:g} s): {one_line(e)[:300]}") from None
        joined = True
        yield dist.group.WORLD
    except Terminated:
        raise DataError(f"{who}: stopped by torchrun, which ends the job when a process fails (that process's error "
                        "is on its stderr); no model file was written") from None
    except CLIError as e:
        e.args = (f"{who}: {one_line(e)}",)
        raise
    except Exception as e:  # noqa: BLE001 - every failure of a rank is one line, with its rank
        if os.environ.get("MOEKIT_DEBUG"):
            raise
        if is_peer_failure(e):
            detail = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", one_line(e))  # gloo's source file and line
            detail = detail.split(". This is typically")[0][:300]
            raise DataError(f"{who}: the job failed in a sum over the processes: another process failed, left or "
                            f"took longer than --timeout {args.timeout:g} s (its error is on its stderr): "
                            f"{detail}; no model file was written") from None
        raise DataError(f"{who}: {type(e).__name__}: {one_line(e)[:500]}") from None
    finally:
        if joined:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        signal.signal(signal.SIGTERM, old)
