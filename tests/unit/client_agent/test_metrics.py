"""Tests of the client agent's Prometheus metrics (fed from the runtime's metric dicts)."""

from __future__ import annotations

from fedprompt_client_agent.metrics import ClientMetrics


def test_training_and_evaluation_update_the_silo_series() -> None:
    m = ClientMetrics()
    m.observe_training(
        1, {"loss": 1.7, "steps": 10.0, "seconds": 3.0, "step_seconds": 0.3, "examples_seen": 160}
    )
    m.observe_training(2, {"loss": 1.2, "steps": 10.0, "seconds": 2.0, "step_seconds": 0.2})
    m.observe_evaluation(2, {"accuracy": 0.8, "macro_f1": 0.7, "loss": 0.9})
    v = m.registry.get_sample_value
    assert v("fedprompt_client_rounds_trained_total") == 2
    assert v("fedprompt_client_train_steps_total") == 20
    assert v("fedprompt_client_train_loss") == 1.2
    assert v("fedprompt_client_train_step_seconds_count") == 2
    assert v("fedprompt_client_train_step_seconds_sum") == 0.5
    assert v("fedprompt_client_train_step_seconds_bucket", {"le": "0.25"}) == 1
    assert v("fedprompt_client_train_seconds_sum") == 5.0
    assert v("fedprompt_client_eval_accuracy") == 0.8
    assert v("fedprompt_client_round") == 2
    assert v("fedprompt_client_dp_sgd_epsilon") == 0


def test_dp_sgd_epsilon_is_reported_when_the_runtime_gives_it() -> None:
    m = ClientMetrics()
    m.observe_training(1, {"loss": 2.0, "dp_sgd_epsilon": 3.5})
    assert m.registry.get_sample_value("fedprompt_client_dp_sgd_epsilon") == 3.5
