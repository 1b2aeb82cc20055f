"""Fixtures of the in-process lsq tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small networks on small images make small operations: one intra-op thread spends no
    time in OpenMP (and avoids its stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
