import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models on a 2-core machine: a second intra-op thread only spins and
    fights any other process (a backward pass got ~100x slower). The long
    end-to-end checks (``slow``) keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
