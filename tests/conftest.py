import contextlib
import functools
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Tests run on 2 CPU cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@functools.cache
def backbone_for(method: str) -> tuple[str, int]:
    """A small backbone and image size a method trains: small_cnn at 16 px, or for the methods
    that mask a Vision Transformer's patches (MAE, I-JEPA) or refuse small_cnn (SimMIM: ViTs and
    ResNets) vit_tiny at 32 px (8x8 patches)."""
    from methods import METHODS, build_method
    from networks import build_backbone

    if METHODS[method].requires_vit:
        return ("vit_tiny", 32)
    try:
        build_method(method, *build_backbone("small_cnn", 16))
    except ValueError:
        return ("vit_tiny", 32)
    return ("small_cnn", 16)


@contextlib.contextmanager
def small_test_split(size: int = 200):
    """The synthetic test split cut to `size` images (from its 2,000): the test-set passes of a
    whole run (validation, online probe, kNN) cost most of a tiny run's time. Not undone by a
    test's `monkeypatch.undo()`."""
    import utils.data
    from utils.synthetic import SyntheticShapes

    def shapes(train=True, transform=None, seed=0, num_images=None):
        return SyntheticShapes(train, transform, seed, num_images or (None if train else size))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utils.data, "SyntheticShapes", shapes)
        yield


@pytest.fixture(scope="module")
def small_test_set():
    """small_test_split(200) for a whole module of runs that test files, formats and exact
    resumption, not accuracy (`pytest.mark.usefixtures("small_test_set")`)."""
    with small_test_split(200):
        yield


@pytest.fixture
def run_dirs(tmp_path):
    """Flags that send a run's logs and checkpoints into a temporary folder."""
    return ["--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts")]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption(
        "--fast",
        action="store_true",
        help="the fast tier for the edit loop: unit tests only, no whole runs, subprocesses or "
        "learning tests (the default, the full suite, is what CI runs)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on 2 CPU cores; run with --runslow")
    config.addinivalue_line(
        "markers", "full: whole runs, subprocesses, learning tests: left out by --fast"
    )


def pytest_collection_modifyitems(config, items):
    fast = config.getoption("--fast")
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_full = pytest.mark.skip(reason="full suite only (not --fast)")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        # a test that writes run folders (the run_dirs fixture) runs main.py or main_linear.py
        whole_run = "run_dirs" in getattr(item, "fixturenames", ())
        if fast and ("full" in item.keywords or whole_run):
            item.add_marker(skip_full)
