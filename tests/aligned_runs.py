"""One small synthetic brain and its ReAlnet runs, made once per test session and shared by the alignment,
evaluation, decoding and demo tests (through the ``aligned_runs`` fixture of tests/conftest.py).

Training CORnet-S costs seconds per step on a 2-core CPU, so the suite aligns once: under pytest-xdist the
first worker to ask makes the runs while the others wait on a file lock, then every worker reads the same
folders. The runs are those of ReAlnet's "what must be shown": a calibrated CORnet-S (random weights whose
BatchNorm statistics are the images', as a pretrained network's fit its inputs) aligned to subject 1, and
the unpaired control from the same start. The control costs only its training steps: align keeps the
teacher's targets and the starting model's test outputs of the paired run (one process makes both), and
neither run writes checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

SIZE = 32
DATA = dict(
    n_subjects=2,
    n_train_concepts=16,
    images_per_concept=4,
    n_test=30,
    n_sessions=2,
    test_repetitions=10,
    image_size=SIZE,
)
# No checkpoints: the runs are read, never resumed (each would be 650 MB of weights and Adam state).
ALIGN = dict(
    epochs=6, batch_size=16, lr=1e-3, image_size=SIZE, amp="fp32", progress=False, seed=0, keep_checkpoints=0
)


@dataclass(frozen=True)
class AlignedRuns:
    """Where the shared runs are.

    Attributes:
        root: the synthetic dataset (2 subjects; 64 training and 30 test images of 32 px).
        cornet_s: the calibrated starting CORnet-S (a state-dict .pth, as published checkpoints are).
        paired: subject 1's run folder (aligned to its EEG; config, metrics, model and summary, no
            checkpoint).
        control: subject 1's unpaired-control run folder (the same start and settings).
        summaries: each run's summary.json, by "paired" and "control".
    """

    root: Path
    cornet_s: Path
    paired: Path
    control: Path
    summaries: dict[str, dict]


def calibrated_cornet_s(paths: list[str], path: Path, size: int = SIZE) -> Path:
    """A random CORnet-S whose BatchNorm statistics are those of the images (one cumulative batch)."""
    from fastalign.data import ImageTransform, load_images
    from fastalign.models import calibrate_batchnorm, cornet_s

    torch.manual_seed(0)
    net = calibrate_batchnorm(cornet_s(), load_images(paths, ImageTransform(size, crop=False)))
    torch.save(net.state_dict(), path)
    return path


def _settings() -> dict:
    """The runs' settings and a digest of the code that makes them (the data writer's and align's
    sources, the compiled ops): runs kept from a session of other code are made again, not read."""
    import hashlib

    import fastalign

    root = Path(fastalign.__file__).parent
    code = hashlib.sha256()
    for path in sorted([*root.glob("data/**/*.py"), *root.glob("train/*.py"), *root.glob("models/**/*.py")]):
        code.update(path.read_bytes())
    code.update(b"".join(p.read_bytes() for p in sorted(root.glob("_C*.so"))))
    settings = {"data": DATA, "align": ALIGN, "code": code.hexdigest()[:16]}
    return json.loads(json.dumps(settings))  # as aligned_runs.json holds them


def make_aligned_runs(folder: Path) -> AlignedRuns:
    """Makes the dataset and runs under ``folder``, or reads them when a previous call made them with
    these settings (a folder outside the session's own, kept across sessions, may hold older ones)."""
    done = folder / "aligned_runs.json"
    if not done.exists() or json.loads(done.read_text()).get("settings") != _settings():
        from fastalign.data import load_image_metadata, make_synthetic_things
        from fastalign.train import align

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the step is memory-bound; a second thread costs on a busy 2-core machine
        try:
            data = make_synthetic_things(folder / "synth", overwrite=True, **DATA)
            weights = calibrated_cornet_s(
                load_image_metadata(data.image_dir).paths("training"), folder / "cornet_s.pth"
            )
            kw = dict(ALIGN, weights=weights, overwrite=True)
            summaries = {
                "paired": align(data.root, 1, out=folder / "paired", **kw).summary,
                "control": align(data.root, 1, out=folder / "control", control="unpaired", **kw).summary,
            }
        finally:
            torch.set_num_threads(threads)
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": _settings(), "summaries": summaries}))
        tmp.replace(done)
    return AlignedRuns(
        root=folder / "synth",
        cornet_s=folder / "cornet_s.pth",
        paired=folder / "paired",
        control=folder / "control",
        summaries=json.loads(done.read_text())["summaries"],
    )
