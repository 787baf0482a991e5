"""``fedprompt-make-silos``: write the bundled drug-review task as silo folders.

Example::

    fedprompt-make-silos --num-silos 4 --seed 0 --out runs/silos

writes ``runs/silos/clinic-0-womens-health/`` and so on, one folder per silo in
the format read by ``fedprompt_client_agent.data.text_silos.load_silo_dir``, and prints a
short summary per silo.

``--scenario`` picks one of :mod:`fedprompt_client_agent.tools.scenarios`: ``clinics``
(the default; the same silos as without the option), ``many-small`` (``--num-silos``
defaults to 24 text / 30 vision silos of ``--silo-size`` 18 reviews / 100 images),
``misleading-metadata`` (``--misleading-fraction`` of the silos, default 0.33, publish
another group's metadata) and ``concept-shift`` (two labels swap meaning in one group).
Every scenario but ``clinics`` writes its truth to ``scenario.json`` beside the silo
folders, never into them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fedprompt_client_agent.data.text_silos import SiloData, write_silo_dir
from fedprompt_client_agent.tools.drug_review_silos import make_drug_review_silos
from fedprompt_client_agent.tools.scenarios import (
    DEFAULT_MISLEADING_FRACTION,
    MANY_SMALL_SILOS,
    MANY_SMALL_SIZE,
    SCENARIO_NAMES,
    Scenario,
    concept_shift,
    ensure_held_out,
    group_of,
    many_small_classes_per_silo,
    mislead_metadata,
    write_sidecar,
)

if TYPE_CHECKING:
    from fedprompt_client_agent.data.image_silos import ImageSiloData

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
    parser.add_argument(
        "--num-silos",
        type=int,
        default=None,
        help="number of silos (default: 4; many-small: 24 text, 30 vision)",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIO_NAMES,
        default=Scenario.CLINICS.value,
        help="clinics (default): specialised clinics with truthful metadata; many-small: "
        "many small clinics; misleading-metadata: a share of silos publish another group's "
        "metadata; concept-shift: two labels swap meaning in one group. The truth of every "
        "scenario but clinics goes to scenario.json beside the silo folders",
    )
    parser.add_argument(
        "--silo-size",
        type=int,
        default=None,
        help="many-small: examples per silo (default: 18 reviews, 100 images)",
    )
    parser.add_argument(
        "--misleading-fraction",
        type=float,
        default=None,
        help=f"misleading-metadata: share of silos that publish another group's metadata "
        f"(default: {DEFAULT_MISLEADING_FRACTION})",
    )
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
    scenario = Scenario(args.scenario)
    if args.silo_size is not None and scenario is not Scenario.MANY_SMALL:
        parser.error("--silo-size is an option of --scenario many-small")
    if args.misleading_fraction is not None and scenario is not Scenario.MISLEADING_METADATA:
        parser.error("--misleading-fraction is an option of --scenario misleading-metadata")
    task = "vision" if args.task == "vision" else "text"
    if args.num_silos is None:
        args.num_silos = MANY_SMALL_SILOS[task] if scenario is Scenario.MANY_SMALL else 4
    if scenario is Scenario.MANY_SMALL and args.silo_size is None:
        args.silo_size = MANY_SMALL_SIZE[task]
    if args.task == "vision":
        return _write_vision(args, scenario)
    try:
        small = scenario is Scenario.MANY_SMALL
        silos = make_drug_review_silos(
            args.num_silos,
            num_conditions=args.num_conditions,
            seed=args.seed,
            skew=args.skew,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            max_reviews=args.num_silos * args.silo_size if small else None,
            proportional=small,
        )
        silos, truth = _apply_scenario(silos, "text", scenario, args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedprompt-make-silos: error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    for silo in silos:
        folder = write_silo_dir(silo, out / silo.name)
        print(_summary_line(silo, folder))
    print(f"labels: {', '.join(f'{i}={name}' for i, name in enumerate(silos[0].labels))}")
    _report_truth(out, truth)
    return 0


AnySilo = TypeVar("AnySilo", SiloData, "ImageSiloData")


def _apply_scenario(
    silos: list[AnySilo], task: str, scenario: Scenario, args: argparse.Namespace
) -> tuple[list[AnySilo], dict[str, Any] | None]:
    """The scenario's silos and its truth for the sidecar (None: clinics, no sidecar)."""
    if scenario is Scenario.CLINICS:
        return silos, None
    # a generator of its own: the silos themselves are those of the default scenario
    rng = np.random.default_rng([args.seed, SCENARIO_NAMES.index(scenario.value)])
    truth: dict[str, Any] = {
        "scenario": scenario.value,
        "task": task,
        "seed": args.seed,
        "num_silos": len(silos),
    }
    per_silo: dict[str, dict[str, Any]]
    if scenario is Scenario.MISLEADING_METADATA:
        fraction = (
            DEFAULT_MISLEADING_FRACTION
            if args.misleading_fraction is None
            else args.misleading_fraction
        )
        silos, per_silo = mislead_metadata(silos, task, fraction=fraction, rng=rng)
        truth["misleading_fraction"] = fraction
    else:
        if scenario is Scenario.MANY_SMALL:
            silos = [ensure_held_out(s) for s in silos]
            truth["silo_size"] = args.silo_size
        shift = None
        if scenario is Scenario.CONCEPT_SHIFT:
            silos, shift = concept_shift(silos, task, rng=rng)
            truth["concept_shift"] = shift
        per_silo = {}
        for index, silo in enumerate(silos):
            group = group_of(task, silo.metadata)
            per_silo[silo.name] = {
                "index": index,
                "true_name": silo.name,
                "true_group": group,
                "published_group": group,
                "misleading": False,
            }
            if shift is not None:
                per_silo[silo.name]["label_map"] = (
                    shift["label_map"] if silo.name in shift["silos"] else {}
                )
    truth["silos"] = per_silo
    return silos, truth


def _report_truth(out: Path, truth: dict[str, Any] | None) -> None:
    """Write the sidecar and say what the scenario changed."""
    if truth is None:
        return
    path = write_sidecar(out, truth)
    misled = [n for n, t in truth["silos"].items() if t["misleading"]]
    if misled:
        print(f"misleading metadata: {', '.join(misled)}")
    shift = truth.get("concept_shift")
    if shift:
        print(
            f"concept shift in group {shift['group']}: labels "
            f"{' and '.join(shift['swapped_names'])} swapped in {', '.join(shift['silos'])}"
        )
    print(f"scenario {truth['scenario']}: truth in {path}")


def _write_vision(args: argparse.Namespace, scenario: Scenario) -> int:
    """Write rotated, label-skewed digit silos (``.npz``) and print a summary."""
    from fedprompt_client_agent.data.image_silos import write_image_silo_dir
    from fedprompt_client_agent.tools.digit_silos import make_digit_silos

    small = scenario is Scenario.MANY_SMALL
    max_images = args.max_images
    if small:
        wanted = args.num_silos * args.silo_size
        max_images = wanted if max_images is None else min(max_images, wanted)
    try:
        silos = make_digit_silos(
            args.num_silos,
            source=args.source,
            seed=args.seed,
            skew=args.skew,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            max_images=max_images,
            classes_per_silo=many_small_classes_per_silo(args.num_silos) if small else None,
        )
        silos, truth = _apply_scenario(silos, "vision", scenario, args)
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
    _report_truth(args.out, truth)
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
