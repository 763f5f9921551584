import json

import pytest
import torch

DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models on a 2-core machine: a second intra-op thread only spins and
    fights any other process (a backward pass got ~100x slower). Session-wide,
    so that module-scoped fixtures (reference runs that a test compares bit
    for bit with a resumed one) train with the same thread count as the tests:
    a different count may sum in a different order."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture(autouse=True)
def all_threads_when_slow(request):
    """The long end-to-end checks (``slow``) keep torch's default."""
    if not request.node.get_closest_marker("slow"):
        yield
        return
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def strict_json():
    """Reads a JSON file back with NaN / Infinity refused: results never hold non-finite numbers."""
    def read(path):
        def reject(constant):
            raise AssertionError(f"non-finite value {constant} in {path}")

        return json.loads(path.read_text(), parse_constant=reject)
    return read


@pytest.fixture
def rerun_matches():
    """Checks that ``kdlens validate`` run again in ``out`` reuses the trained networks and,
    measuring again from their saved weights, gives the numbers ``first`` holds."""
    def check(out, first, settings):
        from kdlens.validate import ESTIMATORS, NETWORKS, run_validation

        for path in (out / "measurements").iterdir():  # measured again, from the saved weights
            path.unlink()
        again = run_validation(out, progress=False, settings=settings)
        assert all(again["accuracy"][n]["reused"] for n in NETWORKS)
        for network in NETWORKS:
            for estimator in ESTIMATORS:
                a, b = dict(again[network][estimator]), dict(first[network][estimator])
                a.pop("seconds"), b.pop("seconds")
                assert a == b
        assert again["bars"] == first["bars"]
    return check
