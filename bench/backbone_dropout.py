"""Validation accuracy of text prompt tuning with and without dropout in the frozen backbone.

Usage: ``.venv/bin/python -m bench.backbone_dropout [--silos 3] [--seeds 0 1 2] [--steps 20 40]``

The soft-prompt model keeps its frozen backbone in eval mode (no dropout), as every other
model family does; that is what lets hosted silos train in one shared pass with the same
result as alone, and keeps runs reproducible. This script is the validation check behind
that choice: the bundled drug-review task split into ``--silos`` clinics with a quarter of
each kept for validation, local prompt tuning (AdamW, batch 16, 64 tokens) of every silo and
seed with the backbone's dropout on (its train mode, as before) and off, and the validation
accuracy after each number of ``--steps``. It prints every pair and the mean paired
difference (no-dropout minus dropout). Only validation splits are read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fedprompt_client_agent.data.silo_files import silo_folders_below
from fedprompt_client_agent.data.text_silos import load_silo_dir
from fedprompt_client_agent.models.text_prompt import PromptClassifier, build_prompt_classifier
from fedprompt_client_agent.tools import make_silos
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig


class _DropoutPromptClassifier(PromptClassifier):
    """The soft-prompt model as it was: ``train()`` also puts the backbone in train mode."""

    def train(self, mode: bool = True) -> _DropoutPromptClassifier:
        torch.nn.Module.train(self, mode)
        return self


def _val_accuracies(silo_dir: Path, seed: int, dropout: bool, steps: list[int]) -> list[float]:
    silo = load_silo_dir(silo_dir)
    model, tokenizer = build_prompt_classifier(num_labels=silo.num_labels, seed=seed, device="cpu")
    if dropout:
        model.__class__ = _DropoutPromptClassifier
    trainer = LocalTrainer(
        model, tokenizer, silo, TrainConfig(steps=1, batch_size=16, max_length=64, seed=seed)
    )
    out, done = [], 0
    for total in steps:
        trainer.train(steps=total - done)
        done = total
        out.append(trainer.evaluate("val").accuracy)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--silos", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, nargs="+", default=[20, 40])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="backbone-dropout-") as tmp:
        out = Path(tmp) / "silos"
        argv = ["--num-silos", str(args.silos), "--out", str(out), "--val-fraction", "0.25"]
        if make_silos.main(argv) != 0:
            raise SystemExit("could not generate the silos")
        diffs: dict[int, list[float]] = {s: [] for s in args.steps}
        for seed in args.seeds:
            for silo_dir in silo_folders_below(out):
                with_dropout = _val_accuracies(silo_dir, seed, True, args.steps)
                without = _val_accuracies(silo_dir, seed, False, args.steps)
                for total, a, b in zip(args.steps, with_dropout, without, strict=True):
                    diffs[total].append(b - a)
                    print(
                        f"seed {seed} {silo_dir.name} {total} steps: dropout {a:.3f}, none {b:.3f}"
                    )
    for total, d in diffs.items():
        wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
        print(
            f"{total} steps: no-dropout minus dropout {statistics.mean(d):+.3f} "
            f"(sd {statistics.stdev(d):.3f}, {wins} better, {losses} worse of {len(d)})"
        )


if __name__ == "__main__":
    main()
