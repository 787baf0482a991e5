"""Fairness across clients: the summary of the coordinator's rounds and the bench report."""

from __future__ import annotations

import pytest

from fedprompt.fairness import fairness_summary


def test_fairness_summary_on_a_hand_example() -> None:
    # x = [0.5, 1.0]: mean 0.75, worst 0.5, std 0.25, Jain (1.5)^2 / (2 * 1.25) = 0.9.
    summary = fairness_summary([0.5, 1.0])
    assert summary == pytest.approx(
        {"accuracy_mean": 0.75, "accuracy_worst": 0.5, "accuracy_std": 0.25, "jain_index": 0.9}
    )


def test_jain_index_of_three_clients() -> None:
    # x = [1, 2, 3]: (6)^2 / (3 * 14) = 36/42 = 6/7.
    assert fairness_summary([1.0, 2.0, 3.0])["jain_index"] == pytest.approx(6 / 7)


def test_jain_index_is_one_for_equal_accuracies_and_one_over_n_for_a_single_winner() -> None:
    assert fairness_summary([0.8, 0.8, 0.8, 0.8])["jain_index"] == pytest.approx(1.0)
    assert fairness_summary([1.0, 0.0, 0.0, 0.0])["jain_index"] == pytest.approx(0.25)


def test_fairness_summary_edge_cases() -> None:
    assert fairness_summary([]) == {}
    assert fairness_summary([0.0, 0.0])["jain_index"] == 1.0
