"""The one registry of federated strategies: names and what every service must agree on.

Each strategy is described once, here, by a :class:`StrategySpec`: what the client trains
(its :class:`ModelFamily`), whether anything travels, whether the shared tensors have a
cluster level beside the global one, and the default learning rate of the adapted
parameters per task. The command line, the benchmark plan, the coordinator and the
client agents all read this registry. Behaviour lives with each service, keyed by these
names: the coordinator's ``Strategy`` objects (levels, train tasks, aggregation) and the
client agent's model-family registry (what is built and trained).

============  =====================================  ==========================================
strategy      what travels, at which level            aggregation (coordinator)
============  =====================================  ==========================================
local         nothing (each silo trains alone)        none
fedavg        prompt + head, all global               n-weighted FedAvg
clustered     prompt.global global; rest per cluster  n-weighted FedAvg per level
fpl           prompt.global global; rest per cluster  contrastive weights per cluster,
                                                      DP-FedAvg of the global level (if on)
lora-fedavg   LoRA adapters + head, global            n-weighted FedAvg
full-fedavg   every trainable weight + head, global   n-weighted FedAvg (the traffic reference)
============  =====================================  ==========================================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class StrategyName(enum.StrEnum):
    """Accepted by ``strategy:`` in the configs and ``--strategy`` on the command lines."""

    LOCAL = "local"
    FEDAVG = "fedavg"
    CLUSTERED = "clustered"
    FPL = "fpl"
    LORA_FEDAVG = "lora-fedavg"
    FULL_FEDAVG = "full-fedavg"


class ModelFamily(enum.StrEnum):
    """What a client adapts on its frozen backbone (the client agent builds it by this name)."""

    #: A segmented soft prompt (global | cluster | local) and a linear head.
    PROMPT = "prompt"
    #: peft LoRA adapters and a linear head.
    LORA = "lora"
    #: Every backbone weight and a linear head (the communication reference).
    FULL = "full"


#: The tasks of the bundled data (``fedprompt up --task``), which the learning rates are keyed by.
TASKS: tuple[str, ...] = ("text", "vision")


@dataclass(frozen=True)
class StrategySpec:
    """What every service knows about one strategy.

    Attributes
    ----------
    name
        The strategy's name.
    family
        What the client trains.
    shares_tensors
        Whether any tensor travels (``local``: none).
    learning_rates
        Default learning rate of the adapted parameters per task (``text``, ``vision``):
        soft prompts take large steps, LoRA adapters smaller ones, full fine-tuning the
        usual small ones.
    summary
        One line for help texts.
    clustered
        Whether the strategy has a cluster level (``prompt.global`` global, the rest per
        cluster) besides the global one.
    """

    name: StrategyName
    family: ModelFamily
    shares_tensors: bool
    learning_rates: Mapping[str, float]
    summary: str
    clustered: bool = False

    def learning_rate(self, task: str) -> float:
        """The default learning rate of this strategy on ``task`` (``text`` or ``vision``)."""
        try:
            return self.learning_rates[task]
        except KeyError:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}") from None


def _rates(text: float, vision: float) -> Mapping[str, float]:
    return MappingProxyType({"text": text, "vision": vision})


_PROMPT_RATES = _rates(3e-2, 3e-2)

#: Every strategy by name, in the order reports list them (the method last among prompts).
STRATEGIES: Mapping[StrategyName, StrategySpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            StrategySpec(
                StrategyName.LOCAL,
                ModelFamily.PROMPT,
                shares_tensors=False,
                learning_rates=_PROMPT_RATES,
                summary="every silo trains alone (nothing travels)",
            ),
            StrategySpec(
                StrategyName.FEDAVG,
                ModelFamily.PROMPT,
                shares_tensors=True,
                learning_rates=_PROMPT_RATES,
                summary="one global prompt and head",
            ),
            StrategySpec(
                StrategyName.CLUSTERED,
                ModelFamily.PROMPT,
                shares_tensors=True,
                learning_rates=_PROMPT_RATES,
                summary="a global prompt segment plus one cluster segment and head per cluster",
                clustered=True,
            ),
            StrategySpec(
                StrategyName.FPL,
                ModelFamily.PROMPT,
                shares_tensors=True,
                learning_rates=_PROMPT_RATES,
                summary="clustered plus contrastive alignment and optional DP-FedAvg (the method)",
                clustered=True,
            ),
            StrategySpec(
                StrategyName.LORA_FEDAVG,
                ModelFamily.LORA,
                shares_tensors=True,
                learning_rates=_rates(3e-3, 3e-3),
                summary="LoRA adapters travel instead of prompts",
            ),
            StrategySpec(
                StrategyName.FULL_FEDAVG,
                ModelFamily.FULL,
                shares_tensors=True,
                learning_rates=_rates(5e-5, 3e-4),
                summary="every weight of the model travels (the communication reference)",
            ),
        )
    }
)

#: The names in registry order, for command-line choices and plans.
STRATEGY_NAMES: tuple[str, ...] = tuple(name.value for name in STRATEGIES)

#: Strategies whose client trains a soft prompt (the others adapt weights).
PROMPT_STRATEGIES = frozenset(s.name for s in STRATEGIES.values() if s.family is ModelFamily.PROMPT)


def strategy_spec(name: str) -> StrategySpec:
    """Look a strategy up by name.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    try:
        return STRATEGIES[StrategyName(name)]
    except ValueError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}") from None


def strategies_help() -> str:
    """``name: summary`` of every strategy, for ``--strategy`` help texts."""
    return "; ".join(f"{s.name.value}: {s.summary}" for s in STRATEGIES.values())
