"""torch.distributed helpers shared by the trainers: rank and size, sums over ranks, the same state everywhere.

Every helper takes ``group``, a ``torch.distributed`` process group, and
treats ``None`` as *one process*: rank 0 of 1, sums and broadcasts are the
identity.  A trainer therefore calls them unconditionally.  moekit never
initialises torch.distributed itself: the caller does
(``torch.distributed.init_process_group``; ``torchrun`` sets the environment
for it) and passes the group explicitly (``torch.distributed.group.WORLD``
for the default one).  A process group is never picked up implicitly.

Failures.  A collective waits for every rank of the group.  When a rank dies,
the others usually fail at once (the connection closes); when it hangs, they
wait at most the ``timeout=`` given to ``init_process_group`` (torch's
default: 30 minutes) and then raise.  Nothing here adds timeouts of its own:
pass a shorter ``timeout`` there for a faster failure.

:func:`launch` starts a few local processes (``spawn``) joined in a gloo
group, for tests and small experiments on one machine.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import os
import socket
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "all_reduce_sum",
    "broadcast_module",
    "broadcast_object",
    "data_parallel",
    "free_port",
    "gloo_available",
    "launch",
    "rank_minibatches",
    "row_range",
    "same_on_all_ranks",
    "tensor_digest",
    "world",
]


def world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` for None.

    Raises
    ------
    ValueError
        If a group is given but torch.distributed is not initialised.

    Examples
    --------
    >>> world(None)
    (0, 1)
    """
    if group is None:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group is given but torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group (torchrun does) first, or leave process_group None")
    return dist.get_rank(group), dist.get_world_size(group)


def _global_rank(group, group_rank: int) -> int:
    """The global rank of ``group``'s rank ``group_rank`` (collectives take global ranks as ``src``)."""
    return group_rank if group is None or group is dist.group.WORLD else dist.get_global_rank(group, group_rank)


def all_reduce_sum(value, group=None):
    """The sum over the ranks of ``group`` of a tensor or a float (the same value on every rank).

    Parameters
    ----------
    value : Tensor or float
        Not modified.
    group : ProcessGroup or None
        None: ``value`` itself is returned.

    Returns
    -------
    Tensor or float
        The same kind as ``value`` (a new tensor on the same device and dtype).

    Shapes
    ------
    A tensor of any shape; the sum is elementwise.

    Examples
    --------
    >>> all_reduce_sum(2.5), all_reduce_sum(torch.ones(2)).tolist()
    (2.5, [1.0, 1.0])
    """
    if group is None:
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t
    t = torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return float(t)


def same_on_all_ranks(value: torch.Tensor, group=None) -> bool:
    """Whether ``value`` (a tensor of numbers) is equal on every rank; the same answer on every rank.

    Two all-reduces (maximum and minimum).  Compare integers or digests
    (:func:`tensor_digest`), not float sums: those depend on the number of
    threads.

    Shapes
    ------
    ``value`` any shape, the same on every rank.

    Examples
    --------
    >>> same_on_all_ranks(torch.tensor([3, 1]))
    True
    """
    if group is None:
        return True
    hi = value.detach().clone()
    lo = value.detach().clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    return bool(torch.equal(hi, lo))


def tensor_digest(*tensors: torch.Tensor) -> torch.Tensor:
    """A 64-bit digest of the shapes, dtypes and bytes of some tensors, as an int64 tensor of shape (1,).

    Equal tensors give equal digests on every machine and thread count; for
    checking that every rank holds the same data (:func:`same_on_all_ranks`).
    The tensors are copied to the CPU.

    Examples
    --------
    >>> a = torch.arange(4.0)
    >>> bool(tensor_digest(a) == tensor_digest(a.clone())), bool(tensor_digest(a) == tensor_digest(a + 1))
    (True, False)
    """
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return torch.tensor([int.from_bytes(h.digest(), "little", signed=True)], dtype=torch.int64)


def broadcast_object(obj, src: int = 0, group=None):
    """``obj`` (anything picklable) of rank ``src`` of ``group`` on every rank; ``obj`` itself for None.

    Examples
    --------
    >>> broadcast_object({"seed": 3})
    {'seed': 3}
    """
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=_global_rank(group, src), group=group)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group=None) -> nn.Module:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank of ``group``, in place.

    The modules must have the same structure on every rank (parameters and
    buffers of the same shapes, in the same order).  Returns ``module``.

    Examples
    --------
    >>> lin = torch.nn.Linear(2, 1)
    >>> broadcast_module(lin) is lin
    True
    """
    if group is None:
        return module
    tensors = list(module.parameters()) + list(module.buffers())
    shapes = torch.tensor([len(tensors)] + [t.numel() for t in tensors], dtype=torch.int64)
    if not same_on_all_ranks(torch.tensor([shapes.numel(), int(shapes.sum())], dtype=torch.int64), group):
        raise ValueError("broadcast_module: the module has different parameters or buffers on different ranks; "
                         "build the same model on every rank")
    source = _global_rank(group, src)
    for t in tensors:
        dist.broadcast(t.data, src=source, group=group)
    return module


def row_range(n: int, group=None) -> tuple[int, int]:
    """This rank's contiguous share ``[lo, hi)`` of ``n`` rows: sizes differ by at most one (every row for None).

    The same split as :meth:`moekit.data.ArrayBatches.shard`.

    Examples
    --------
    >>> row_range(10)
    (0, 10)
    """
    rank, size = world(group)
    bounds = np.linspace(0, n, size + 1).round().astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def rank_minibatches(n: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int):
    """This rank's rows of each global minibatch of an epoch, as :class:`DistributedSampler` deals them.

    The sampler shuffles the ``n`` rows by ``seed + epoch`` (the *global
    order*), pads it to a multiple of ``world_size`` by repeating its first
    rows, and deals position ``p`` to rank ``p % world_size``.  Each rank cuts
    its list into local minibatches of ``ceil(batch_size / world_size)``
    rows; local minibatch ``j`` of every rank together is then a run of
    consecutive positions of the global order: the global minibatch ``j``,
    exactly what one process cutting the global order into minibatches of
    ``world_size * ceil(batch_size / world_size)`` rows would see.  The
    padding rows (positions ``>= n``) are marked, for weight 0.

    Returns
    -------
    rows : LongTensor (m,)
        Row indices, in this rank's order (``m = ceil(n / world_size)``).
    positions : LongTensor (m,)
        Their positions in the global order.
    local_batch : int
        Rows per local minibatch.

    Shapes
    ------
    rows (m,), positions (m,).

    Examples
    --------
    >>> r0, p0, b = rank_minibatches(5, 4, 0, 2, seed=0, epoch=0)
    >>> r1, p1, _ = rank_minibatches(5, 4, 1, 2, seed=0, epoch=0)
    >>> b, p0.tolist(), p1.tolist()
    (2, [0, 2, 4], [1, 3, 5])
    >>> one, _, _ = rank_minibatches(5, 4, 0, 1, seed=0, epoch=0)  # one process: the global order
    >>> sorted(r0[:2].tolist() + r1[:2].tolist()) == sorted(one[:4].tolist())
    True
    """
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    rows = torch.as_tensor(list(sampler), dtype=torch.long)
    positions = torch.arange(rows.numel()) * world_size + rank
    return rows, positions, -(-batch_size // world_size)


class _Call(nn.Module):
    """A module whose ``forward`` is ``method`` of the wrapped module (DDP hooks ``forward`` only)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


def data_parallel(module: nn.Module, group, method: str = "forward", find_unused_parameters: bool = False,
                  static_graph: bool = False):
    """``module`` wrapped in :class:`torch.nn.parallel.DistributedDataParallel` over ``group``.

    Calling the wrapper calls ``module.<method>``; its backward pass averages
    the gradients over the ranks (DDP's all-reduce, overlapped with the
    backward pass).  Building it copies rank 0's parameters and buffers to
    every rank, so every rank starts alike.  Buffers are not broadcast again
    at each call (the trainers do not change them while training).  A CUDA
    module gets ``device_ids=[its device]``; a CPU module (gloo) none.

    Parameters
    ----------
    module : Module
        Trained in place: the wrapper shares its parameters.
    group : ProcessGroup
    method : str, default="forward"
        The method the wrapper's forward calls (e.g. ``"log_prob"``).
    find_unused_parameters : bool, default=False
        DDP's option: needed when some trainable parameters get no gradient
        in a step and the set of such parameters changes from step to step.
    static_graph : bool, default=False
        DDP's option: every step uses the same parameters (some of which may
        get no gradient); cheaper than ``find_unused_parameters``.

    Returns
    -------
    DistributedDataParallel

    Examples
    --------
    >>> import torch.distributed as dist
    >>> dist.is_initialized()  # data_parallel needs an initialised group; see launch()
    False
    """
    world(group)
    dev = next(iter(module.parameters())).device
    target = module if method == "forward" else _Call(module, method)
    # buffers are synchronised once, when the wrapper is built, not at every call (newer torch names it
    # forward_sync_buffers, older broadcast_buffers)
    sync = ({"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
            else {"broadcast_buffers": False})
    return nn.parallel.DistributedDataParallel(
        target,
        device_ids=[dev] if dev.type == "cuda" else None,
        process_group=group,
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
        **sync,
    )


def gloo_available() -> bool:
    """Whether torch.distributed with the gloo backend (CPU) is available in this torch build.

    Examples
    --------
    >>> isinstance(gloo_available(), bool)
    True
    """
    return bool(dist.is_available() and dist.is_gloo_available())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).

    Examples
    --------
    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launched(rank: int, fn: Callable, world_size: int, port: int, backend: str, timeout_s: float, threads: int,
              args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world_size: int, *args, backend: str = "gloo", timeout_s: float = 60.0,
           threads: int = 1) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new local processes joined in one process group.

    Each process is started with ``spawn`` (a fresh interpreter), uses
    ``threads`` torch threads, and initialises the default group on
    127.0.0.1 at a free port with ``timeout_s`` as the group's timeout (a rank
    that waits longer for the others raises).  ``fn`` and ``args`` must be
    picklable (``fn`` defined at a module's top level); results travel back
    through files.  Returns when every process has ended; when one raises,
    the others are ended and the error is raised here
    (:func:`torch.multiprocessing.spawn`).

    Parameters
    ----------
    fn : callable
        ``fn(rank, world_size, *args)``; the group is ``torch.distributed.group.WORLD``.
    world_size : int
    *args
        Passed on to ``fn``.
    backend : str, default="gloo"
    timeout_s : float, default=60.0
    threads : int, default=1

    Examples
    --------
    >>> launch.__name__  # e.g. launch(worker, 2, str(tmp_path)); see tests/training/test_ddp_mdn.py
    'launch'
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    torch.multiprocessing.start_processes(
        _launched,
        args=(fn, world_size, free_port(), backend, float(timeout_s), int(threads), args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
