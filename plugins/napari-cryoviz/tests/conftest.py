"""Shared fixtures: a tiny simulated dataset and a tiny run trained on it (once per session).

Without napari (an engine-only install) the plugin's tests are not collected.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("napari") is None or importlib.util.find_spec(
        "napari_cryoviz") is None:
    collect_ignore_glob = ["test_*.py"]
    TINY = None
else:
    from napari_cryoviz._sample_data import DemoSpec, make_demo_dataset, make_demo_run

    TINY = DemoSpec(n_particles=240, box_size=16, pixel_size_angstrom=6.0, snr=2.0, epochs=3,
                    zdim=2, width=32, depth=1, pe_dim=8, enc_width=32, lr=3e-3, batch_size=48)


@pytest.fixture(scope="session")
def tiny_spec():
    """The size of the tiny dataset and run."""
    return TINY


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cryoviz_plugin")


@pytest.fixture(scope="session")
def tiny_star(tiny_root):
    return make_demo_dataset(TINY, tiny_root)


@pytest.fixture(scope="session")
def tiny_run(tiny_root, tiny_star):
    return make_demo_run(TINY, tiny_root)


@pytest.fixture
def wait_workers(qtbot):
    """``wait_workers(*docks)``: block until every worker the docks started has finished."""

    def wait(*docks, timeout_ms: int = 60_000) -> None:
        qtbot.waitUntil(lambda: all(not getattr(d, "workers", []) for d in docks),
                        timeout=timeout_ms)

    return wait
