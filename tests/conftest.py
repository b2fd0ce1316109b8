"""Shared fixtures; a test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: one intra-op thread is both faster and bit-reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
