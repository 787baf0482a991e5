"""Names of the federated strategies, shared by the coordinator and the client agents."""

from __future__ import annotations

import enum


class StrategyName(enum.StrEnum):
    """Accepted by ``strategy:`` in the configs and ``--strategy`` on the command lines.

    ``local``: every silo trains alone (nothing travels). ``fedavg``: one global prompt and
    head. ``clustered``: a global segment plus one cluster segment and head per cluster.
    ``fpl``: ``clustered`` plus contrastive alignment (client InfoNCE, server alignment
    weights) and optional DP-FedAvg of the global segment. ``lora-fedavg``: LoRA adapters
    travel instead of prompts. ``full-fedavg``: every weight of the model travels (the
    communication reference).
    """

    LOCAL = "local"
    FEDAVG = "fedavg"
    CLUSTERED = "clustered"
    FPL = "fpl"
    LORA_FEDAVG = "lora-fedavg"
    FULL_FEDAVG = "full-fedavg"


#: Strategies whose client trains a soft prompt (the others adapt weights).
PROMPT_STRATEGIES = frozenset(
    {StrategyName.LOCAL, StrategyName.FEDAVG, StrategyName.CLUSTERED, StrategyName.FPL}
)
