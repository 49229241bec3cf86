"""``fedaug generate``: synthetic samples from a global model."""

from __future__ import annotations

import argparse

from fedaug.config import DEFAULT_SAMPLE_STEPS, LABEL_MODES

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``generate`` to the ``fedaug`` command."""
    g = sub.add_parser("generate", help="sample synthetic images from a global model",
                       description="Write PNG files per class, a grid PNG (one row per class, "
                       "labelled) and samples.npz (images uint8 N,H,W,C and labels) from a "
                       "global model folder. A progress bar shows on a terminal.")
    g.add_argument("--model", required=True, help="global model folder, e.g. fedaug-out/global")
    g.add_argument("--num-samples", type=int, required=True,
                   help="samples in total (spread over the classes by --labels unless --label)")
    g.add_argument("--labels", choices=LABEL_MODES, default="prior",
                   help="prior (default): the classes in the federation's proportions, from "
                   "the sites' noised class counts in the model card (even when the card has "
                   "none); balanced: the same number of every class")
    g.add_argument("--label", type=int, help="only this class index")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                   help=f"DDIM steps (default {DEFAULT_SAMPLE_STEPS})")
    g.add_argument("--guidance-scale", type=float,
                   help="classifier-free guidance: u + w (c - u) of the null class's and the "
                   "class's outputs (1: none; default: the model's own, fedaug_generator.json's "
                   "guidance_scale; needs a model trained with label-dropout > 0)")
    g.add_argument("--out", required=True, help="output folder (new or empty)")
    g.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out: first remove what an earlier generate "
                   "wrote there (class folders of PNGs, grid.png, samples.npz), nothing else")
    g.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from fedaug.generator.generate import generate_to_folder

    written = generate_to_folder(args.model, args.out, num_samples=args.num_samples,
                                 label=args.label, seed=args.seed, steps=args.steps,
                                 labels=args.labels, overwrite=args.overwrite,
                                 guidance_scale=args.guidance_scale)
    print(f"wrote {written['num-samples']} samples: {written['folder']} "
          f"(grid {written['grid']}, arrays {written['npz']})")
    return 0
