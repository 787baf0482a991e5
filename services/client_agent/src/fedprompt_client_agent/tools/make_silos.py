"""``fedprompt-make-silos``: write the bundled drug-review task as silo folders.

Example::

    fedprompt-make-silos --num-silos 4 --seed 0 --out runs/silos

writes ``runs/silos/clinic-0-womens-health/`` and so on, one folder per silo in
the format read by ``fedprompt_client_agent.data.text_silos.load_silo_dir``, and prints a
short summary per silo.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fedprompt_client_agent.data.text_silos import SiloData, write_silo_dir
from fedprompt_client_agent.tools.drug_review_silos import make_drug_review_silos

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        Parser for the ``fedprompt-make-silos`` options.
    """
    parser = argparse.ArgumentParser(
        prog="fedprompt-make-silos",
        description="Split the bundled drugs.com condition-prediction task into specialised clinic silos.",
    )
    parser.add_argument("--num-silos", type=int, default=4, help="number of silos (default: 4)")
    parser.add_argument(
        "--task",
        choices=["text", "vision"],
        default="text",
        help="text: drug-review condition prediction; vision: rotated, label-skewed digits",
    )
    parser.add_argument(
        "--source", choices=["mnist", "digits"], default="mnist", help="digit images (vision)"
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="cap on images used (vision; default all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder, one sub-folder per silo"
    )
    parser.add_argument(
        "--num-conditions", type=int, default=8, help="K most frequent conditions (default: 8)"
    )
    parser.add_argument(
        "--skew", type=float, default=0.8, help="share of in-specialty reviews (default: 0.8)"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.15, help="validation share (default: 0.15)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="test share (default: 0.2)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Make the silos, write them under ``--out`` and print a summary.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Process exit status: 0 on success, 2 on invalid arguments.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "vision":
        return _write_vision(args)
    try:
        silos = make_drug_review_silos(
            args.num_silos,
            num_conditions=args.num_conditions,
            seed=args.seed,
            skew=args.skew,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedprompt-make-silos: error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    for silo in silos:
        folder = write_silo_dir(silo, out / silo.name)
        print(_summary_line(silo, folder))
    print(f"labels: {', '.join(f'{i}={name}' for i, name in enumerate(silos[0].labels))}")
    return 0


def _write_vision(args: argparse.Namespace) -> int:
    """Write rotated, label-skewed digit silos (``.npz``) and print a summary."""
    from fedprompt_client_agent.data.image_silos import write_image_silo_dir
    from fedprompt_client_agent.tools.digit_silos import make_digit_silos

    try:
        silos = make_digit_silos(
            args.num_silos,
            source=args.source,
            seed=args.seed,
            skew=args.skew,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            max_images=args.max_images,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedprompt-make-silos: error: {exc}", file=sys.stderr)
        return 2
    for silo in silos:
        folder = write_image_silo_dir(silo, args.out / silo.name)
        histogram = Counter(int(y) for y in silo.train.labels)
        hist_text = " ".join(f"{k}:{histogram[k]}" for k in sorted(histogram))
        print(
            f"{silo.name}  rotation={silo.metadata.get('scanner_orientation_deg')}  "
            f"train/val/test={len(silo.train)}/{len(silo.val)}/{len(silo.test)}  "
            f"train labels [{hist_text}]  -> {folder}"
        )
    return 0


def _summary_line(silo: SiloData, folder: Path) -> str:
    """Describe one written silo on a single line."""
    histogram = Counter(ex.label for ex in silo.train)
    hist_text = " ".join(f"{label}:{histogram[label]}" for label in sorted(histogram))
    return (
        f"{silo.name}  specialty={silo.metadata.get('specialty')}  "
        f"train/val/test={len(silo.train)}/{len(silo.val)}/{len(silo.test)}  "
        f"train labels [{hist_text}]  -> {folder}"
    )


if __name__ == "__main__":
    sys.exit(main())
