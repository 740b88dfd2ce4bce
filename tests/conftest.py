"""Test-run settings shared by every test module.

Under pytest-xdist (``-n 2``) every worker runs on its own core: one torch thread per worker, and
the same for the interpreters the tests start (README blocks, the command line), so that two
workers do not fight over two cores with four threads (on small tensors that oversubscription
costs tens of times the work itself).
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the interpreters the tests start
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
