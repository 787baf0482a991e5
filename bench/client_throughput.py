"""Client agent prompt-tuning throughput against a bare peft training loop (target >= 95%).

Usage: ``.venv/bin/python -m bench.client_throughput [--steps 20] [--batch-size 16]
[--max-length 64] [--repeats 3]``

Both loops train the same frozen all-MiniLM-L6-v2 with a 16-token peft prompt
(PromptTuningConfig) and a linear head on mean-pooled states, with AdamW, on the *same*
batches: the client agent's own tokenised batches of one silo of the bundled drug-review
task (so batch size and sequence lengths are identical).

* agent: ``LocalTrainer.train(steps=...)`` of the client agent (``PromptClassifier``: its
  segment bookkeeping, finite-loss check, seeded dropout, fresh optimizer per call);
* bare: a textbook loop over ``get_peft_model(backbone, PromptTuningConfig(...))`` that
  calls the peft model with ``input_ids``/``attention_mask``, pools, classifies, steps.

The two are timed alternately ``--repeats`` times (after one warm-up each); the figure is
the ratio of the median examples/s. torch uses the same thread count for both.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from fedprompt_client_agent.data.text_silos import load_silo_dir
from fedprompt_client_agent.models.backbone import default_model_dir, load_backbone
from fedprompt_client_agent.models.text_prompt import PromptSpec, build_prompt_classifier
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig


def _bare_loop(
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], num_labels: int, prompt: int
) -> float:
    """Examples/s of a plain peft prompt-tuning loop over ``batches``."""
    backbone, _, _ = load_backbone(default_model_dir(), device="cpu")
    model = get_peft_model(
        backbone,
        PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=prompt,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        ),
    )
    head = torch.nn.Linear(backbone.config.hidden_size, num_labels)
    optimizer = torch.optim.AdamW(
        [*(p for p in model.parameters() if p.requires_grad), *head.parameters()], lr=1e-3
    )
    model.train()

    def run() -> float:
        started = time.perf_counter()
        for ids, mask, labels in batches:
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            full = torch.cat([mask.new_ones(mask.shape[0], prompt), mask], dim=1)
            weights = full.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            loss = F.cross_entropy(head(pooled), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return sum(len(b[2]) for b in batches) / (time.perf_counter() - started)

    run()  # warm-up
    return run()


def main() -> int:
    """Run the bench and print its figures."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="client-throughput-") as tmp:
        subprocess.run(
            [str(Path(sys.executable).parent / "fedprompt-make-silos"), "--num-silos", "1",
             "--seed", "0", "--out", tmp],
            check=True, capture_output=True,
        )  # fmt: skip
        silo = load_silo_dir(next(p for p in Path(tmp).iterdir() if p.is_dir()))
    spec = PromptSpec(n_global=8, n_cluster=4, n_local=4)
    model, tokenizer = build_prompt_classifier(
        default_model_dir(), num_labels=silo.num_labels, spec=spec, device="cpu"
    )
    trainer = LocalTrainer(
        model,
        tokenizer,
        silo,
        TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length),
    )
    batch = min(args.batch_size, trainer.num_train_examples)
    # the agent's own batches, replayed by the bare loop (same sizes, same lengths)
    probe = LocalTrainer(
        model,
        tokenizer,
        silo,
        TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length),
    )
    batches = []
    for _ in range(args.steps):
        (ids, mask), labels = probe.training_batch(probe.next_training_indices(batch))
        batches.append((ids, mask, labels))

    def agent_run() -> float:
        result = trainer.train(steps=args.steps)
        return result.examples_seen / result.seconds

    agent_run()  # warm-up
    agent, bare = [], []
    for _ in range(args.repeats):
        agent.append(agent_run())
        bare.append(_bare_loop(batches, silo.num_labels, spec.total))
    a, b = statistics.median(agent), statistics.median(bare)
    widths = [int(m.shape[1]) for _, m, _ in batches]
    print(
        f"MiniLM-L6 + {spec.total}-token prompt, batch {batch}, text tokens <= {args.max_length} "
        f"(mean padded width {np.mean(widths):.1f}), {args.steps} steps, {args.threads} torch threads"
    )
    print(f"agent (LocalTrainer): {a:7.1f} examples/s  runs {[round(x, 1) for x in agent]}")
    print(f"bare peft loop:       {b:7.1f} examples/s  runs {[round(x, 1) for x in bare]}")
    print(f"ratio agent/bare: {a / b:.3f}  (target >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
