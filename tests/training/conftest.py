import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two compute threads on two shared cores stall each other whenever anything else runs beside the tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
