"""Test-wide settings (tests and the doctests in moekit/).

The tests fit many small models; on a 2-core machine, torch's intra-op
threads cost far more than they save on such problems (and fight with
pytest-xdist workers), so every test runs single-threaded.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _doctest_temp_files(request, tmp_path, monkeypatch):
    """Doctests that write files (``tempfile.mkdtemp()``) write under pytest's own temporary folder."""
    from _pytest.doctest import DoctestItem

    if isinstance(request.node, DoctestItem):
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
