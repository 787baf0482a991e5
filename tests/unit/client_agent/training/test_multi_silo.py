"""Several silos trained in one backbone pass equal each silo trained alone (real MiniLM)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.data.text_silos import SiloData, TextExample
from fedprompt_client_agent.models.text_prompt import (
    PromptSpec,
    build_prompt_classifier,
    forward_many,
)
from fedprompt_client_agent.models.visual_prompt import build_visual_prompt_classifier
from fedprompt_client_agent.tools.digit_silos import load_mnist
from fedprompt_client_agent.tools.drug_review_silos import load_drug_reviews
from fedprompt_client_agent.training.contrastive_loss import make_info_nce_loss
from fedprompt_client_agent.training.multi_silo import (
    TrainJob,
    batch_key,
    evaluate_together,
    train_together,
)
from fedprompt_client_agent.training.proximal import ProximalTerm
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig, sum_extra_losses
from fedprompt_client_agent.training.vision_trainer import VisionTrainer

SPEC = PromptSpec(n_global=4, n_cluster=2, n_local=2)
KEYS = ("prompt.global", "prompt.cluster", "prompt.local", "head.weight", "head.bias")
LABELS = ("Birth Control", "Depression", "Pain")


@pytest.fixture(scope="module")
def silos() -> list[SiloData]:
    """Three silos of different sizes (one smaller than a batch) over three labels."""
    texts: dict[str, list[str]] = {label: [] for label in LABELS}
    for review in load_drug_reviews():
        bucket = texts.get(review.condition)
        if bucket is not None and len(bucket) < 30:
            bucket.append(review.text)
    made = []
    for s, (n_train, n_val) in enumerate(((7, 2), (3, 1), (9, 0))):
        offset = s * 10
        split: dict[str, tuple[TextExample, ...]] = {}
        for name, (lo, hi) in {
            "train": (0, n_train),
            "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, n_train + n_val + 1),
        }.items():
            split[name] = tuple(
                TextExample(texts[label][offset + i], k)
                for k, label in enumerate(LABELS)
                for i in range(lo, hi)
            )
        made.append(SiloData(name=f"silo-{s}", labels=LABELS, metadata={}, **split))
    return made


def _trainers(silos: list[SiloData], *, shared: bool, steps: tuple[int, ...]) -> list[LocalTrainer]:
    trainers = []
    for s, (silo, n_steps) in enumerate(zip(silos, steps, strict=True)):
        model, tokenizer = build_prompt_classifier(
            num_labels=len(LABELS), spec=SPEC, seed=s, device="cpu", share_backbone=shared
        )
        config = TrainConfig(steps=n_steps, batch_size=4, max_length=24, seed=10 + s)
        trainers.append(LocalTrainer(model, tokenizer, silo, config))
    return trainers


def _info_nce(own: int) -> Any:
    rng = np.random.default_rng(own)
    centroids = {k: rng.normal(size=384).astype(np.float32) for k in range(2)}
    return make_info_nce_loss(weight=0.5, temperature=0.3, own=own, centroids=centroids)


def _extras(trainers: list[LocalTrainer]) -> list[Any]:
    """Each silo's round-start extra loss: InfoNCE plus FedProx (μ 0.5), FedProx alone
    (μ 5, the head only), InfoNCE alone; θ₀ copied from each silo's own model now."""
    shared = ("prompt.global", "prompt.cluster", "head.weight", "head.bias")
    return [
        sum_extra_losses(_info_nce(0), ProximalTerm(trainers[0].model, mu=0.5, names=shared)),
        ProximalTerm(trainers[1].model, mu=5.0, names=("head.weight", "head.bias")),
        _info_nce(1),
    ]


def _assert_same_state(a: Any, b: Any) -> None:
    sa, sb = a.personal_state(), b.personal_state()
    for key in KEYS:
        np.testing.assert_allclose(sa[key], sb[key], rtol=2e-4, atol=2e-6, err_msg=key)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("max_pass_examples", [256, 4])
def test_training_together_equals_training_each_silo_alone(
    silos: list[SiloData], max_pass_examples: int
) -> None:
    steps = (4, 2, 3)  # different step counts: a silo leaves the loop when its task is done
    alone = _trainers(silos, shared=False, steps=steps)
    together = _trainers(silos, shared=True, steps=steps)
    assert len({id(t.model.backbone) for t in together}) == 1  # one backbone in memory
    assert len({id(t.model.backbone) for t in alone}) == 3
    before = [t.model.personal_state() for t in together]
    for _round in range(2):  # the data order and call counters carry over between rounds
        expected = [t.train(extra_loss=e) for t, e in zip(alone, _extras(alone), strict=True)]
        jobs = [TrainJob(t, e) for t, e in zip(together, _extras(together), strict=True)]
        got = train_together(jobs, max_pass_examples=max_pass_examples)
        for exp, res in zip(expected, got, strict=True):
            assert not isinstance(res, BaseException)
            assert (res.steps, res.examples_seen) == (exp.steps, exp.examples_seen)
            assert res.mean_loss == pytest.approx(exp.mean_loss, rel=1e-4)
        for a, b in zip(alone, together, strict=True):
            _assert_same_state(a.model, b.model)
    for t, state in zip(together, before, strict=True):  # and training did change each silo
        assert not np.allclose(t.model.personal_state()["prompt.local"], state["prompt.local"])


@pytest.mark.usefixtures("single_thread")
def test_evaluating_together_equals_evaluating_alone(silos: list[SiloData]) -> None:
    trainers = _trainers(silos, shared=True, steps=(1, 1, 1))
    for t in trainers:
        t.update_config(eval_batch_size=2)  # several chunks per split, mixed across silos
    requests = [(t, split) for t in trainers for split in ("train", "val", "test")]
    got = evaluate_together(requests, max_pass_examples=5)  # type: ignore[arg-type]
    for (trainer, split), res in zip(requests, got, strict=True):
        if split == "val" and trainer.silo.name == "silo-2":  # this silo has no val split
            assert isinstance(res, ValueError) and "empty" in str(res)
            continue
        assert not isinstance(res, BaseException)
        exp = trainer.evaluate(split)  # type: ignore[arg-type]
        assert (res.accuracy, res.macro_f1, res.num_examples) == (
            exp.accuracy,
            exp.macro_f1,
            exp.num_examples,
        )
        assert res.loss == pytest.approx(exp.loss, rel=1e-4)


@pytest.mark.usefixtures("single_thread")
def test_a_silo_whose_loss_is_not_finite_fails_alone(silos: list[SiloData]) -> None:
    alone = _trainers(silos, shared=False, steps=(3, 3, 3))
    together = _trainers(silos, shared=True, steps=(3, 3, 3))
    with torch.no_grad():
        together[1].model.head.bias.fill_(float("nan"))  # a corrupted personal state
    got = train_together([TrainJob(t) for t in together])
    assert isinstance(got[1], FloatingPointError) and "silo-1" in str(got[1])
    for s in (0, 2):
        alone[s].train()
        _assert_same_state(alone[s].model, together[s].model)


def test_forward_many_refuses_models_on_different_backbones(silos: list[SiloData]) -> None:
    separate = _trainers(silos[:2], shared=False, steps=(1, 1))
    ids = torch.ones((1, 3), dtype=torch.long)
    batch = (ids, torch.ones_like(ids))
    with pytest.raises(ValueError, match="share one backbone and layout"):
        forward_many([separate[0].model, separate[1].model], [batch, batch])
    with pytest.raises(ValueError, match="one batch per model"):
        forward_many([separate[0].model], [batch, batch])


def test_only_plain_prompt_trainers_on_one_backbone_train_together(silos: list[SiloData]) -> None:
    shared = _trainers(silos[:2], shared=True, steps=(1, 1))
    separate = _trainers(silos[:1], shared=False, steps=(1,))
    assert batch_key(shared[0]) == batch_key(shared[1]) is not None
    assert batch_key(separate[0]) != batch_key(shared[0])
    assert batch_key(object()) is None
    with pytest.raises(ValueError, match="cannot train in one pass"):
        train_together([TrainJob(shared[0]), TrainJob(separate[0])])
    with pytest.raises(ValueError, match="max_pass_examples"):
        train_together([TrainJob(shared[0])], max_pass_examples=0)


def test_the_frozen_backbone_stays_in_eval_mode_while_the_prompt_trains() -> None:
    model, _ = build_prompt_classifier(num_labels=2, spec=SPEC, device="cpu", share_backbone=True)
    model.train()
    assert model.training and model.head.training
    assert not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())  # no dropout anywhere


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def digit_silos() -> list[ImageSiloData]:
    """Three MNIST silos of different sizes over the digits 0, 1 and 7."""
    images, labels = load_mnist()
    made = []
    for s, n_train in enumerate((9, 4, 7)):
        parts: dict[str, tuple[list[np.ndarray], list[int]]] = {
            "train": ([], []),
            "val": ([], []),
            "test": ([], []),
        }
        for label, digit in enumerate((0, 1, 7)):
            positions = np.flatnonzero(labels == digit)[s * 20 :]
            for name, (lo, hi) in {
                "train": (0, n_train),
                "val": (n_train, n_train + 2),
                "test": (n_train + 2, n_train + 3),
            }.items():
                parts[name][0].extend(images[positions[lo:hi]])
                parts[name][1].extend([label] * (hi - lo))
        splits = {
            name: ImageSplit(images=np.stack(imgs), labels=np.array(lbls))
            for name, (imgs, lbls) in parts.items()
        }
        made.append(
            ImageSiloData(name=f"digits-{s}", labels=("0", "1", "7"), metadata={}, **splits)
        )
    return made


def _vision_trainers(silos: list[ImageSiloData], *, shared: bool) -> list[VisionTrainer]:
    return [
        VisionTrainer(
            build_visual_prompt_classifier(
                num_labels=3, seed=s, device="cpu", share_backbone=shared
            ),
            silo,
            TrainConfig(steps=3, batch_size=8, seed=20 + s),
        )
        for s, silo in enumerate(silos)
    ]


@pytest.mark.usefixtures("single_thread")
def test_visual_prompts_train_and_evaluate_together_as_alone(
    digit_silos: list[ImageSiloData],
) -> None:
    alone = _vision_trainers(digit_silos, shared=False)
    together = _vision_trainers(digit_silos, shared=True)
    assert len({id(t.model.backbone) for t in together}) == 1
    assert batch_key(together[0]) == batch_key(together[2]) != batch_key(alone[0])
    for _round in range(2):
        width = int(together[0].model.segment_parameter("cluster").shape[1])  # type: ignore[attr-defined]
        extras = [_info_nce_rings(0, width), None, _info_nce_rings(1, width)]
        expected = [t.train(extra_loss=e) for t, e in zip(alone, extras, strict=True)]
        got = train_together(
            [TrainJob(t, e) for t, e in zip(together, extras, strict=True)], max_pass_examples=10
        )
        for exp, res in zip(expected, got, strict=True):
            assert not isinstance(res, BaseException)
            assert res.mean_loss == pytest.approx(exp.mean_loss, rel=1e-4)
    for a, b in zip(alone, together, strict=True):
        _assert_same_state(a.model, b.model)  # type: ignore[arg-type]
    requests = [(t, split) for t in together for split in ("val", "test")]
    for (trainer, split), res in zip(requests, evaluate_together(requests), strict=True):  # type: ignore[arg-type]
        assert not isinstance(res, BaseException)
        exp = trainer.evaluate(split)  # type: ignore[arg-type]
        assert (res.accuracy, res.num_examples) == (exp.accuracy, exp.num_examples)
        assert res.loss == pytest.approx(exp.loss, rel=1e-4)


def test_text_and_image_trainers_never_share_a_pass(
    silos: list[SiloData], digit_silos: list[ImageSiloData]
) -> None:
    text = _trainers(silos[:1], shared=True, steps=(1,))
    image = _vision_trainers(digit_silos[:1], shared=True)
    with pytest.raises(ValueError, match="cannot train in one pass"):
        train_together([TrainJob(text[0]), TrainJob(image[0])])


def _info_nce_rings(own: int, width: int) -> Any:
    rng = np.random.default_rng(own)
    centroids = {k: rng.normal(size=width).astype(np.float32) for k in range(2)}  # mean of [3, P]
    return make_info_nce_loss(weight=0.5, temperature=0.3, own=own, centroids=centroids)
