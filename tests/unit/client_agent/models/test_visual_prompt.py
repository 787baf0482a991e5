"""Tests for the visual prompt classifier: real EfficientNet-Lite0 weights, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)

from fedprompt_client_agent.models.efficientnet_lite import load_efficientnet_lite0
from fedprompt_client_agent.models.visual_prompt import (
    VisualPromptClassifier,
    VisualPromptSpec,
    build_visual_prompt_classifier,
    images_to_tensor,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _model(seed: int = 0, spec: VisualPromptSpec | None = None) -> VisualPromptClassifier:
    return build_visual_prompt_classifier(num_labels=3, spec=spec, seed=seed, device="cpu")


@pytest.fixture(scope="module")
def model() -> VisualPromptClassifier:
    """One classifier for the read-only tests of the module."""
    return _model()


def _batch(n: int = 4, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- geometry


def test_spec_defaults_give_a_40_pixel_canvas() -> None:
    spec = VisualPromptSpec()
    assert (spec.image_size, spec.n_global, spec.n_cluster, spec.n_local) == (32, 2, 1, 1)
    assert (spec.total, spec.canvas_size) == (4, 40)
    assert spec.ring_bounds() == {"global": (0, 2), "cluster": (2, 1), "local": (3, 1)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_global": -1},
        {"n_global": 0, "n_cluster": 0, "n_local": 0},
        {"image_size": 16, "n_global": 2, "n_cluster": 1, "n_local": 1},  # 24 px < 32
        {"image_size": 0},
        {"init_std": -0.1},
        {"init_std": float("nan")},
        {"n_local": 1.5},
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        VisualPromptSpec(**kwargs)  # type: ignore[arg-type]


def test_rings_partition_the_border() -> None:
    spec = VisualPromptSpec(image_size=30, n_global=3, n_cluster=2, n_local=1)
    side = spec.canvas_size
    rings = spec.ring_indices()
    union = np.concatenate(list(rings.values()))
    assert len(union) == len(set(union.tolist()))
    border = np.ones((side, side), dtype=bool)
    border[spec.total : side - spec.total, spec.total : side - spec.total] = False
    assert sorted(union.tolist()) == np.flatnonzero(border).tolist()
    for name, (offset, width) in spec.ring_bounds().items():
        outer, inner = side - 2 * offset, side - 2 * offset - 2 * width
        assert len(rings[name]) == outer**2 - inner**2
    assert np.unravel_index(rings["global"][0], (side, side)) == (0, 0)


def test_segment_shapes_and_omitted_segments(model: VisualPromptClassifier) -> None:
    assert model.expected_shapes() == {
        "prompt.global": (3, 304),
        "prompt.cluster": (3, 140),
        "prompt.local": (3, 132),
        "head.weight": (3, 1280),
        "head.bias": (3,),
    }
    no_cluster = VisualPromptClassifier(
        load_efficientnet_lite0(),
        num_labels=2,
        spec=VisualPromptSpec(n_global=3, n_cluster=0, n_local=1),
    )
    assert set(no_cluster.shared_state()) == {"prompt.global", "head.weight", "head.bias"}
    assert set(no_cluster.local_state()) == {"prompt.local"}
    with pytest.raises(KeyError):
        no_cluster.segment_parameter("cluster")


def test_only_prompt_and_head_are_trainable(model: VisualPromptClassifier) -> None:
    assert model.trainable_parameter_names() == [
        "prompt.global",
        "prompt.cluster",
        "prompt.local",
        "head.weight",
        "head.bias",
    ]
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.segment_parameter("cluster") is model.prompt_parameters()[1]


# ----------------------------------------------------------------------------- forward


def test_canvas_holds_the_image_inside_the_rings(model: VisualPromptClassifier) -> None:
    images = _batch(2, size=32)
    with torch.no_grad():
        canvas = model.prompted_inputs(images)
    spec = model.spec
    assert canvas.shape == (2, 3, 40, 40)
    inner = canvas[:, :, spec.total : -spec.total, spec.total : -spec.total]
    assert torch.allclose(inner, (images.expand(-1, 3, -1, -1) - 0.5) / 0.5)
    flat = canvas.reshape(2, 3, -1)
    for name, positions in spec.ring_indices().items():
        ring = model.segment_parameter(name).detach()
        assert torch.equal(flat[0][:, torch.from_numpy(positions)], ring)
        assert torch.equal(flat[1][:, torch.from_numpy(positions)], ring)


def test_forward_accepts_grayscale_rgb_and_any_size(model: VisualPromptClassifier) -> None:
    with torch.no_grad():
        gray = model(_batch(2, size=28))
        rgb = model(_batch(2, size=28).expand(-1, 3, -1, -1))
        large = model(_batch(2, size=64))
    assert gray.shape == rgb.shape == large.shape == (2, 3)
    assert gray.dtype == torch.float32
    assert torch.allclose(gray, rgb)
    with pytest.raises(ValueError, match="1 or 3"):
        model(torch.rand(2, 2, 28, 28))


def test_images_to_tensor_converts_and_resizes() -> None:
    gray = np.full((2, 8, 8), 255, dtype=np.uint8)
    out = images_to_tensor(gray, size=16)
    assert out.shape == (2, 1, 16, 16) and torch.allclose(out, torch.ones_like(out))
    rgb = np.zeros((1, 5, 5, 3), dtype=np.uint8)
    assert images_to_tensor(rgb).shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(gray.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        images_to_tensor(np.zeros((1, 5, 5, 2), dtype=np.uint8))


def test_training_updates_prompt_and_head_but_never_the_backbone() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW([*model.prompt_parameters(), *model.head_parameters()], lr=0.1)
    prompt_before = model.personal_state()
    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())
    for step in range(3):
        loss = F.cross_entropy(model(_batch(8, seed=step)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    changed = model.personal_state()
    assert all(not np.array_equal(prompt_before[k], changed[k]) for k in changed)
    model.eval()
    model.train(True)
    assert not any(m.training for m in model.backbone.modules())


# ----------------------------------------------------------------------------- state exchange


def test_seeded_initialisation_is_deterministic() -> None:
    a, b, c = _model(seed=7), _model(seed=7), _model(seed=8)
    state_a, state_b, state_c = a.personal_state(), b.personal_state(), c.personal_state()
    assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
    assert not np.array_equal(state_a["prompt.global"], state_c["prompt.global"])
    assert np.all(state_a["head.bias"] == 0)
    assert 0.05 < float(np.std(state_a["prompt.global"])) < 0.2


def test_shared_state_round_trip_leaves_the_local_ring_alone() -> None:
    model = _model(seed=1)
    other = _model(seed=2)
    local_before = model.local_state()
    model.load_shared_state(other.shared_state())
    shared = model.shared_state()
    assert set(shared) == {"prompt.global", "prompt.cluster", "head.weight", "head.bias"}
    assert all(np.array_equal(shared[k], other.shared_state()[k]) for k in shared)
    assert np.array_equal(model.local_state()["prompt.local"], local_before["prompt.local"])
    assert shared["prompt.global"].dtype == np.float32


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"prompt.local": np.zeros((3, 132), np.float32)}, "unknown shared tensor"),
        ({"prompt.global": np.zeros((3, 300), np.float32)}, "shape"),
        ({"head.bias": np.zeros(3, np.int64)}, "floating point"),
        ({"head.bias": np.array([0.0, np.nan, 0.0], np.float32)}, "NaN"),
    ],
)
def test_load_shared_state_validates_before_changing_anything(
    model: VisualPromptClassifier, tensors: dict[str, np.ndarray], message: str
) -> None:
    before = model.personal_state()
    payload = {"head.weight": np.ones((3, 1280), np.float32), **tensors}
    with pytest.raises(ValueError, match=message):
        model.load_shared_state(payload)
    after = model.personal_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_local_state_round_trip() -> None:
    model = _model()
    ring = np.full((3, 132), 0.25, dtype=np.float32)
    model.load_local_state({"prompt.local": ring})
    assert np.array_equal(model.local_state()["prompt.local"], ring)
    with pytest.raises(ValueError, match="unknown local tensor"):
        model.load_local_state({"prompt.global": np.zeros((3, 304), np.float32)})


def test_save_and_load_personal_is_bit_exact(tmp_path: Path) -> None:
    source = _model(seed=3)
    with torch.no_grad():
        source.segment_parameter("local").mul_(1.7).add_(0.3)
    path = source.save_personal(tmp_path / "state" / "personal.safetensors")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    target = _model(seed=4)
    target.load_personal(path)
    saved, loaded = source.personal_state(), target.personal_state()
    assert all(np.array_equal(saved[k], loaded[k]) for k in saved)
    assert set(saved) == {
        "prompt.global",
        "prompt.cluster",
        "prompt.local",
        "head.weight",
        "head.bias",
    }


def test_load_personal_rejects_bad_files(tmp_path: Path, model: VisualPromptClassifier) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="safetensors"):
        model.load_personal(garbage)
    with pytest.raises(ValueError, match="cannot read"):
        model.load_personal(tmp_path / "absent.safetensors")
    text_file = tmp_path / "text.safetensors"
    state = model.personal_state()
    safetensors.numpy.save_file(
        state, str(text_file), metadata={"format": "fedprompt-personal-prompt/1"}
    )
    with pytest.raises(ValueError, match="not a visual prompt"):
        model.load_personal(text_file)
    partial = tmp_path / "partial.safetensors"
    del state["prompt.local"]
    safetensors.numpy.save_file(state, str(partial))
    with pytest.raises(ValueError, match="missing"):
        model.load_personal(partial)


def test_device_handling_follows_resolve_device() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the error path cannot be exercised")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        build_visual_prompt_classifier(num_labels=2, device="cuda")
    with pytest.raises(ValueError, match=r"unsupported device|unknown device"):
        build_visual_prompt_classifier(num_labels=2, device="tpu")
    assert _model().device == torch.device("cpu")


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("force_functorch", [False, True])
def test_per_sample_gradients_work_with_opacus(force_functorch: bool) -> None:
    """DP-SGD needs per-sample gradients of rings and head; both Opacus modes give them."""
    grad_sample = pytest.importorskip("opacus.grad_sample")
    model = _model()
    images, labels = _batch(3), torch.tensor([0, 1, 2])
    wrapped = grad_sample.GradSampleModule(
        model, batch_first=True, loss_reduction="sum", force_functorch=force_functorch
    )
    F.cross_entropy(wrapped(images), labels, reduction="sum").backward()  # type: ignore[no-untyped-call]
    per_sample = {
        n: p.grad_sample.clone()  # type: ignore[attr-defined]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    wrapped._close()
    assert per_sample["prompt.global"].shape == (3, 3, 304)
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(images[i : i + 1]), labels[i : i + 1], reduction="sum").backward()  # type: ignore[no-untyped-call]
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None
                assert torch.allclose(per_sample[name][i], param.grad, rtol=1e-4, atol=1e-4)
