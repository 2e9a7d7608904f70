"""A small synthetic THINGS-EEG2 dataset shared by the fastalign.data tests (built once per session)."""

from __future__ import annotations

import pytest

from fastalign.data import SyntheticThings, make_synthetic_things

SMALL = dict(
    n_train_concepts=4,
    images_per_concept=3,
    n_test=8,
    n_sessions=2,
    training_repetitions=2,
    test_repetitions=10,
    raw_sfreq=250.0,
    n_voxels=70,
    image_size=48,
    seed=3,
    image_source="procedural",  # the same dataset whether or not scikit-image is installed
)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticThings:
    return make_synthetic_things(tmp_path_factory.mktemp("things"), **SMALL)
