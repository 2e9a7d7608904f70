"""Shared by the fastalign.eval tests: one small synthetic dataset (5 subjects, so that the exact sign-flip
null of 32 patterns can reach p = 1/32 < 0.05)."""

from __future__ import annotations

import pytest

from fastalign.data import SyntheticThings, make_synthetic_things

EVAL_SMALL = dict(
    n_train_concepts=3,
    images_per_concept=1,
    n_test=12,
    n_subjects=5,
    n_sessions=2,
    training_repetitions=2,
    test_repetitions=5,
    raw_sfreq=100.0,
    n_times=25,
    n_voxels=40,
    image_size=24,
    targets_per_session=1,
    seed=1,
    image_source="procedural",  # the same dataset whether or not scikit-image is installed
)


@pytest.fixture(scope="session")
def eval_things(tmp_path_factory: pytest.TempPathFactory) -> SyntheticThings:
    return make_synthetic_things(tmp_path_factory.mktemp("eval_things"), **EVAL_SMALL)
