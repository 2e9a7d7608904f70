"""``fastalign decode``: :func:`fastalign.train.decode` (NICE / AlignVis brain-to-image decoding)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastalign.cli.common import (
    CLI_ONLY,
    Command,
    add_device,
    add_image_size,
    add_progress,
    add_resume_overwrite,
    folder_path,
    int_or_none,
    nonnegative_real,
    number,
    positive_int,
    positive_real,
    rank0,
    seed,
    share,
)


def encoder_option(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE``, the value read as JSON (numbers, true/false) or else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. n_filters=16), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _arguments(p: argparse.ArgumentParser) -> None:
    from fastalign.models.encoders import ENCODERS

    p.add_argument("--data", required=True, help="dataset folder (image_set/, preprocessed_data/)")
    p.add_argument(
        "--subject",
        type=positive_int,
        default=1,
        metavar="N",
        help="the subject decoded (with --leave-one-subject-out: the one held out) (default 1)",
    )
    p.add_argument(
        "--out", type=folder_path, required=True, help="run folder (for several seeds: their parent)"
    )
    p.add_argument(
        "--image-model",
        default="cornet_s",
        help="cornet_s (default), features (the synthetic brain's true features), a ReAlnet run folder or "
        "weights file (.pt, .pth, .safetensors: the published encoder.pt), or npy:NAME (precomputed "
        "embeddings beside each image: <image stem>_NAME.npy, AlignVis's layout)",
    )
    p.add_argument("--layer", help="CORnet-S / ReAlnet layer: IT (default), avgpool, or ReAlnet's response")
    p.add_argument(
        "--weights", help="CORnet-S checkpoint for --image-model cornet_s; default: random from the seed"
    )
    p.add_argument("--encoder", choices=ENCODERS, default="nice", help="brain encoder (default nice)")
    p.add_argument(
        "--encoder-option",
        dest="encoder_options",
        type=encoder_option,
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="encoder options, e.g. n_filters=16 dropout=0.25",
    )
    p.add_argument("--epochs", type=positive_int, default=50, help="default 50")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size (default 128)")
    p.add_argument("--lr", type=positive_real, default=2e-4, help="AdamW's learning rate (default 2e-4)")
    p.add_argument(
        "--weight-decay", type=nonnegative_real, default=0.1, help="AdamW's weight decay (default 0.1)"
    )
    p.add_argument(
        "--temperature", type=positive_real, default=0.04, help="CLIP temperature (default 0.04, published)"
    )
    temp = p.add_mutually_exclusive_group()
    temp.add_argument(
        "--learn-temperature",
        dest="learn_temperature",
        action="store_true",
        help="optimise the temperature from --temperature (default: fixed, as published)",
    )
    temp.add_argument(
        "--fixed-temperature",
        dest="learn_temperature",
        action="store_false",
        help="keep the temperature fixed (the default)",
    )
    p.set_defaults(learn_temperature=False)
    p.add_argument(
        "--seed",
        type=seed,
        nargs="+",
        default=[0],
        metavar="N",
        help="one run per seed, summarised by mean and SEM (default 0)",
    )
    add_image_size(p)
    p.add_argument("--val-fraction", type=share, default=0.1, help="validation share (default 0.1)")
    p.add_argument(
        "--patience",
        type=int_or_none,
        default=30,
        help="early stopping patience in epochs, or none (default 30, published)",
    )
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "fp32"), default="auto", help="default auto")
    p.add_argument(
        "--responses",
        nargs=2,
        metavar=("TRAIN.npy", "TEST.npy"),
        help="responses as arrays instead of the EEG files: MEG/EEG (images, repetitions, channels, "
        "times) or fMRI (images, [repetitions,] voxels; with --encoder mlp)",
    )
    p.add_argument(
        "--leave-one-subject-out",
        action="store_true",
        help="train on every other subject's EEG, test on --subject",
    )
    p.add_argument(
        "--random-repetitions",
        type=positive_int,
        metavar="K",
        help="train each epoch on the average of K repetitions drawn afresh (default: all averaged)",
    )
    p.add_argument("--cache-dir", help="image embedding cache (default DATA/embeddings)")
    add_device(p)
    add_progress(p)
    add_resume_overwrite(p)


def _run(args: argparse.Namespace) -> int:
    from fastalign.train import decode

    kwargs = {k: v for k, v in vars(args).items() if k not in (*CLI_ONLY, "data", "subject")}
    kwargs["encoder_options"] = dict(args.encoder_options)
    kwargs["seed"] = args.seed[0] if len(args.seed) == 1 else args.seed
    if args.responses is not None:
        from fastalign.data._io import load_npy

        kwargs["responses"] = {
            split: load_npy(path, f"decode: --responses {split} file")  # names the flag and the file
            for split, path in zip(("train", "test"), args.responses, strict=True)
        }
    result = decode(args.data, args.subject, **kwargs)
    if rank0():
        runs = [(seed, f.run.path, f.summary) for seed, f in zip(args.seed, result.fits, strict=True)]
        configs = [f.run.read_config()["config"] for f in result.fits]
        print("\n".join([decoded_with(configs, result.summary), *describe(runs, result.summary)]))
    return 0


def decoded_with(configs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The printed line that says what the numbers below are of: the subject decoded (and the subjects
    trained on, when others) and the image model as each run's config.json describes it (its layer and
    weights, ReAlnet run folder or seed), with the subject a ReAlnet run was aligned to (``summary``)."""
    subject = configs[0]["subject"]
    trained = configs[0].get("train_subjects", [subject])
    on = "" if trained == [subject] else f" (trained on {', '.join(f'sub-{s:02d}' for s in trained)})"
    models = list(dict.fromkeys(c["image_model"] for c in configs))
    what = f"the image model {models[0]}" if len(models) == 1 else f"the image models {', '.join(models)}"
    aligned = summary.get("image_model_aligned_to")
    return f"decoding sub-{subject:02d}{on} against {what}" + (f", aligned to {aligned}" if aligned else "")


def _topk(values: dict[str, Any], sem: bool = False) -> str:
    return "  ".join(
        f"top-{k} {number(values[f'top{k}'])}" + (f" +- {number(values[f'top{k}_sem'])}" if sem else "")
        for k in (1, 3, 5)
    )


def describe(runs: list[tuple[int, str, dict[str, Any]]], summary: dict[str, Any]) -> list[str]:
    """The printed result under :func:`decoded_with`'s line: one line per (seed, run folder, its summary),
    the mean +- SEM over seeds (of ``summary``, when several) and chance."""
    lines = [
        f"seed {seed} {path}: {_topk(s)} (best epoch {s['best_epoch']} of {s['epochs_run']})"
        for seed, path, s in runs
    ]
    if len(runs) > 1:
        lines.append(f"mean +- SEM of {len(runs)} seeds: {_topk(summary, sem=True)}")
    chance = {f"top{k}": summary["chance"][f"top{k}"] for k in (1, 3, 5)}
    lines.append(f"chance ({summary['n_gallery']}-image gallery): {_topk(chance)}")
    return lines


COMMAND = Command(
    "decode",
    "train a brain encoder to retrieve seen images (NICE / AlignVis), optionally with an aligned image model",
    (
        "fastalign decode --data data/synth --subject 1 --image-model cornet_s --image-size 64 "
        "--batch-size 8 --out dec",
        "fastalign decode --data data/synth --subject 1 --image-model runs/sub01 --image-size 64 "
        "--batch-size 8 --out rn",
        "fastalign decode --data things --subject 1 --out runs/nice --seed 7 42 191 --weights cornet_s.pth",
        "torchrun --nproc-per-node 2 -m fastalign decode --data data/synth --subject 1 --batch-size 8 "
        "--out runs/ddp",
    ),
    _arguments,
    _run,
)
