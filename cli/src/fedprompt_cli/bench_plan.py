"""What ``fedprompt bench`` runs: tasks, strategies, seeds, learning-rate grid, privacy levels.

The plan has four stages, in this order:

1. ``tune``: on the first seed, every strategy of every task runs once per candidate
   learning rate. The candidate with the best mean *validation* accuracy (each silo's
   ``val`` split, never ``test``) is chosen per (task, strategy).
2. ``eval``: the chosen learning rate runs on the remaining seeds. The first seed's
   tuning run with the chosen rate is reused as that seed's result (its choice looked
   at validation accuracy only), so every headline figure has all seeds.
3. ``privacy``: ``fpl`` with the chosen rate under client-level DP-FedAvg on every shared
   level at each ε of ``dp_epsilons`` (ε = ∞ is the non-private ``fpl`` run), with secure
   aggregation inside each cluster at each ε of ``secure_aggregation_epsilons`` (None: no
   noise, the same arithmetic as ``fpl`` behind masks) and with record-level DP-SGD at each ε
   of ``dp_sgd_epsilons`` (text only: DP-SGD is implemented for text silos), on every seed.
4. ``compression``: ``fpl`` with the chosen rate and each lossy upload compression of
   ``upload_compressions`` (``fp16``, ``int8``) on the first ``compression_seeds`` seeds of
   the ``compression_tasks``. The uncompressed baseline is the plain ``fpl`` run of the
   same seeds, so this stage adds one run per (task, method, seed) and nothing else.
5. ``scenario``: every strategy of ``scenario_strategies`` (None: all) at its chosen rate
   on each hard scenario of ``scenarios`` (``fedprompt-make-silos --scenario``: many small
   clinics, misleading metadata, a concept shift), on the first ``scenario_seeds`` seeds
   of the ``scenario_tasks``. The default scenario (``clinics``) is the tune and eval
   stages' own. Within a (task, scenario, seed) every strategy runs on the same silos.
6. ``ablation``: ``fpl`` with one part taken away (:data:`ABLATIONS`: no client InfoNCE,
   mean instead of contrastive weights, no global segment, no local segment, no
   clustering) on each scenario of ``ablation_scenarios``, at fpl's chosen rate, on the
   first ``ablation_seeds`` seeds of the ``ablation_tasks`` (on the hard scenarios the
   first ``hard_ablation_seeds``, when set). Its reference, full ``fpl``
   of the same task, scenario and seed (:meth:`BenchPlan.reference_of`), runs in the
   tune/eval stages (clinics) or the scenario stage: the same seed and the same silos, so
   every ablation is paired with full fpl.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fedprompt.compression import Compression
from fedprompt.strategies import STRATEGY_NAMES, StrategyName, strategy_spec

__all__ = [
    "ABLATIONS",
    "DEFAULT_SCENARIO",
    "LR_GRID_FACTORS",
    "METHOD",
    "PROMPT_STRATEGIES",
    "SCENARIOS",
    "SCENARIO_SILOS",
    "STRATEGIES",
    "VALIDATED_RATES",
    "Ablation",
    "BenchPlan",
    "RunSpec",
    "TaskSettings",
    "compression_plan",
    "full_plan",
    "gpu_plan",
    "lr_grid",
    "lr_grid_plan",
    "quick_plan",
    "scenario_plan",
    "tiny_plan",
]

#: Every strategy, in the registry's order (the method last among the prompt strategies).
STRATEGIES: tuple[str, ...] = STRATEGY_NAMES

#: The method: what the privacy and compression stages run and the verdicts judge.
METHOD = StrategyName.FPL

#: ``fedprompt-make-silos --scenario`` names (``fedprompt_client_agent.tools.scenarios``),
#: the default first: the bundled clinics, which the tune and eval stages run.
SCENARIOS: tuple[str, ...] = ("clinics", "many-small", "misleading-metadata", "concept-shift")
DEFAULT_SCENARIO = SCENARIOS[0]
#: The strategies that tune a prompt (and head) on one shared frozen backbone: the hard
#: scenarios' field on a CPU (the LoRA and full-model baselines join on the GPU plan).
PROMPT_STRATEGIES: tuple[str, ...] = (
    StrategyName.LOCAL,
    StrategyName.FEDAVG,
    StrategyName.CLUSTERED,
    METHOD,
)
#: Silos per task of a scenario that fixes its own number (else the plan's ``clients``).
SCENARIO_SILOS: dict[str, dict[str, int]] = {"many-small": {"text": 24, "vision": 30}}


@dataclass(frozen=True)
class Ablation:
    """fpl with one part taken away, through the knobs ``fedprompt up`` passes on.

    Attributes
    ----------
    name : str
        Folder-safe name (``no-infonce``).
    removes : str
        What is taken away, in words.
    contrastive_weight : float, optional
        λ of the client InfoNCE term (coordinator ``--contrastive-weight``).
    server_weighting : str, optional
        fpl's cluster weights (coordinator ``--server-weighting``).
    server_optimizer, server_lr : str and float, optional
        The coordinator's server optimizer and its η (``--server-optimizer``,
        ``--server-lr``; None: plain sgd with η = 1).
    proximal_mu : float, optional
        FedProx's μ of the clients (coordinator ``--proximal-mu``; None: 0, off).
    personalize_steps : int, optional
        Steps of the clients' final personalization pass at every evaluation (coordinator
        ``--personalize-steps``; None: 0, none). With it, a run's ``accuracy`` (and
        ``val_accuracy``, ...) is the personalized model's; ``unpersonalized_accuracy`` the
        aggregate's.
    refine_after_rounds : int, optional
        Cluster refinement's rounds of update alignment (coordinator
        ``--refine-after-rounds``; None: 0, off).
    n_global, n_local : int, optional
        Prompt segment sizes of every client (client ``--n-global`` / ``--n-local``; 0:
        no such segment, the prompt is that much shorter).
    clustering : bool
        False: no clusterer, every client in one cluster.
    """

    name: str
    removes: str
    contrastive_weight: float | None = None
    server_weighting: str | None = None
    server_optimizer: str | None = None
    server_lr: float | None = None
    proximal_mu: float | None = None
    personalize_steps: int | None = None
    refine_after_rounds: int | None = None
    n_global: int | None = None
    n_local: int | None = None
    clustering: bool = True


#: The ablations of fpl, by name.
ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        Ablation("no-infonce", "the client InfoNCE term (λ = 0)", contrastive_weight=0.0),
        Ablation(
            "mean-weights",
            "the contrastive cluster weights (FedAvg's weights instead)",
            server_weighting="mean",
        ),
        Ablation("no-global", "the global prompt segment", n_global=0),
        Ablation("no-local", "the local prompt segment", n_local=0),
        Ablation("no-clustering", "the clustering (one cluster of every client)", clustering=False),
    )
}


@dataclass(frozen=True)
class TaskSettings:
    """Per-task run size."""

    rounds: int
    local_steps: int
    batch_size: int
    max_length: int = 64
    max_images: int | None = None


@dataclass(frozen=True)
class RunSpec:
    """One federation of the benchmark."""

    stage: str
    task: str
    strategy: str
    seed: int
    learning_rate: float
    dp_epsilon: float | None = None
    dp_sgd_epsilon: float | None = None
    #: Lossy compression of the clients' uploads (``fp16``, ``int8``; None: uncompressed).
    upload_compression: str | None = None
    #: Secure aggregation inside each cluster (SecAgg+).
    secure_aggregation: bool = False
    #: The silos' scenario (``fedprompt-make-silos --scenario``).
    scenario: str = DEFAULT_SCENARIO
    #: The part of fpl taken away (a key of :data:`ABLATIONS`; None: full fpl).
    ablation: str | None = None

    @property
    def variant(self) -> str:
        """``strategy`` plus its ablation, privacy and compression settings, e.g.
        ``fpl upload int8`` or ``fpl no-global`` (the scenario is not part of it: results are
        grouped by task, scenario and variant)."""
        parts = [self.strategy]
        if self.secure_aggregation:
            parts.append("secagg")
        if self.ablation is not None:
            parts.append(self.ablation)
        if self.dp_epsilon is not None:
            parts.append(f"dp-fedavg ε={self.dp_epsilon:g}")
        if self.dp_sgd_epsilon is not None:
            parts.append(f"dp-sgd ε={self.dp_sgd_epsilon:g}")
        if self.upload_compression is not None:
            parts.append(f"upload {self.upload_compression}")
        return " ".join(parts)

    @property
    def name(self) -> str:
        """A unique folder-safe name of the run."""
        parts = [self.task, self.strategy, f"lr{self.learning_rate:g}", f"s{self.seed}"]
        if self.secure_aggregation:
            parts.append("secagg")
        if self.dp_epsilon is not None:
            parts.append(f"dpfedavg{self.dp_epsilon:g}")
        if self.dp_sgd_epsilon is not None:
            parts.append(f"dpsgd{self.dp_sgd_epsilon:g}")
        if self.upload_compression is not None:
            parts.append(f"up-{self.upload_compression}")
        if self.scenario != DEFAULT_SCENARIO:
            parts.append(self.scenario)
        if self.ablation is not None:
            parts.append(self.ablation)
        return "-".join(parts)

    @property
    def silos_key(self) -> tuple[str, str, int]:
        """(task, scenario, seed): runs with equal keys run on the same silos."""
        return (self.task, self.scenario, self.seed)


@dataclass(frozen=True)
class BenchPlan:
    """The whole benchmark's settings."""

    mode: str
    clients: int
    seeds: tuple[int, ...]
    tasks: dict[str, TaskSettings]
    strategies: tuple[str, ...] = STRATEGIES
    #: Multipliers of the base learning rate tried in the tuning stage.
    lr_factors: tuple[float, ...] = (1.0, 3.0)
    #: The base rate per (task, strategy), where it is not the default of ``fedprompt up``
    #: (the full plan: :data:`VALIDATED_RATES`).
    base_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Strategies whose learning rate is tuned over ``lr_factors`` (None: all); the others
    #: run at their default rate only.
    tuned_strategies: tuple[str, ...] | None = None
    #: Strategies of the eval stage, i.e. on every seed (None: all); the others run on the
    #: first seed only (a CPU plan's LoRA and full-model references: their bytes and one
    #: seed's accuracy, paired with that seed's runs).
    eval_strategies: tuple[str, ...] | None = None
    dp_epsilons: tuple[float, ...] = (1.0, 4.0, 8.0)
    #: Secure-aggregation runs of the privacy stage, by DP ε (None: without noise).
    secure_aggregation_epsilons: tuple[float | None, ...] = (None, 8.0)
    dp_sgd_epsilons: tuple[float, ...] = (8.0,)
    clients_per_process: int = 6
    torch_threads: int = 2
    #: Device of the client agents (``cpu``; ``auto`` or ``cuda`` for a GPU machine).
    device: str = "cpu"
    #: Plaintext gRPC between the run's processes (default: mutual TLS with fresh certs).
    insecure: bool = False
    #: Target accuracy for "bytes to reach" = this fraction of the task's best mean accuracy.
    target_fraction: float = 0.9
    #: Seeds of the privacy stage: the first ``privacy_seeds`` (None: all).
    privacy_seeds: int | None = None
    #: Tasks of the privacy stage (None: all).
    privacy_tasks: tuple[str, ...] | None = None
    #: Lossy upload compressions compared with uncompressed ``fpl`` (``()``: no such stage).
    upload_compressions: tuple[str, ...] = ("fp16", "int8")
    #: Seeds of the compression stage: the first ``compression_seeds`` (None: all).
    compression_seeds: int | None = None
    #: Tasks of the compression stage (None: all).
    compression_tasks: tuple[str, ...] | None = None
    #: The user's own silo folders (``fedprompt bench --data-root``): every run of every
    #: seed reads them (None: the bundled task's silos, made per seed).
    data_root: Path | None = None
    #: Hard scenarios of the scenario stage (not ``clinics``: the tune and eval stages').
    scenarios: tuple[str, ...] = ()
    #: Strategies of the scenario stage (None: all of ``strategies``).
    scenario_strategies: tuple[str, ...] | None = None
    #: Seeds of the scenario stage: the first ``scenario_seeds`` (None: all).
    scenario_seeds: int | None = None
    #: Tasks of the scenario stage (None: all).
    scenario_tasks: tuple[str, ...] | None = None
    #: Ablations of fpl (keys of :data:`ABLATIONS`; ``()``: no such stage).
    ablations: tuple[str, ...] = ()
    #: Scenarios the ablations run on (``clinics`` and any of ``scenarios``).
    ablation_scenarios: tuple[str, ...] = (DEFAULT_SCENARIO,)
    #: Seeds of the ablation stage: the first ``ablation_seeds`` (None: all).
    ablation_seeds: int | None = None
    #: Seeds of the ablations on the hard scenarios: the first ``hard_ablation_seeds``
    #: (None: as on the clinics, ``ablation_seeds``).
    hard_ablation_seeds: int | None = None
    #: Tasks of the ablation stage (None: all).
    ablation_tasks: tuple[str, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clients < 2:
            raise ValueError(f"a benchmark federation needs at least 2 clients, got {self.clients}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}")
        if self.eval_strategies is not None and not set(self.eval_strategies) <= set(STRATEGIES):
            raise ValueError(f"unknown eval strategies {sorted(self.eval_strategies)}")
        if not self.lr_factors:
            raise ValueError("at least one learning-rate factor is needed")
        bad = {k: r for k, r in self.base_rates.items() if not (0.0 < r < float("inf"))}
        if bad:
            raise ValueError(f"base learning rates must be finite and > 0, got {bad}")
        lossy = {c.value for c in Compression} - {Compression.NONE.value}
        if not set(self.upload_compressions) <= lossy:
            raise ValueError(
                f"upload compressions must be among {sorted(lossy)} (none is the plain {METHOD} "
                f"run), got {list(self.upload_compressions)}"
            )
        self._check_scenarios()

    def _check_scenarios(self) -> None:
        """Refuse unknown scenarios and ablations, and ablations without their reference."""
        hard = set(SCENARIOS) - {DEFAULT_SCENARIO}
        if not set(self.scenarios) <= hard:
            raise ValueError(
                f"scenarios must be among {sorted(hard)} (clinics is the eval stage's), "
                f"got {list(self.scenarios)}"
            )
        if not set(self.ablations) <= set(ABLATIONS):
            raise ValueError(
                f"ablations must be among {sorted(ABLATIONS)}, got {list(self.ablations)}"
            )
        if not self.ablations:
            return
        if METHOD not in self.strategies:
            raise ValueError(f"ablations of {METHOD} need {METHOD} among the strategies")
        for scenario in self.ablation_scenarios:
            if scenario == DEFAULT_SCENARIO:
                continue
            if scenario not in self.scenarios:
                raise ValueError(
                    f"ablations on {scenario} need it among the scenarios (full {METHOD} runs "
                    "there in the scenario stage)"
                )
        if set(self.ablation_scenarios) - {DEFAULT_SCENARIO}:
            if METHOD not in (self.scenario_strategies or self.strategies):
                raise ValueError(f"ablations on hard scenarios need {METHOD} in the scenario stage")
            if len(self._hard_ablation_seeds()) > len(self.seeds[: self.scenario_seeds]):
                raise ValueError(
                    "the hard scenarios' ablation seeds must not exceed scenario_seeds"
                )
            if not set(self._tasks(self.ablation_tasks)) <= set(self._tasks(self.scenario_tasks)):
                raise ValueError("ablation_tasks must be among scenario_tasks")

    def _tasks(self, chosen: tuple[str, ...] | None) -> list[str]:
        return [t for t in self.tasks if chosen is None or t in chosen]

    def clients_of(self, spec: RunSpec) -> int:
        """Silos of one run: the scenario's own number, else the plan's ``clients``."""
        return SCENARIO_SILOS.get(spec.scenario, {}).get(spec.task, self.clients)

    def tune_runs(self) -> list[RunSpec]:
        """Stage 1: every candidate learning rate on the first seed."""
        return [
            RunSpec("tune", task, strategy, self.seeds[0], lr)
            for task in self.tasks
            for strategy in self.strategies
            for lr in self.rates_of(task, strategy)
        ]

    def rates_of(self, task: str, strategy: str) -> list[float]:
        """The candidate learning rates of (task, strategy): its base rate times each factor."""
        base = self.base_rates.get((task, strategy))
        return lr_grid(task, strategy, self.factors_of(strategy), base=base)

    def factors_of(self, strategy: str) -> tuple[float, ...]:
        """The learning-rate factors tried for one strategy."""
        if self.tuned_strategies is None or strategy in self.tuned_strategies:
            return self.lr_factors
        return (1.0,)

    def every_seed_strategies(self) -> list[str]:
        """The strategies the eval stage runs on every seed (the others: the first only)."""
        return [
            s for s in self.strategies if self.eval_strategies is None or s in self.eval_strategies
        ]

    def eval_runs(self, chosen: dict[tuple[str, str], float]) -> list[RunSpec]:
        """Stage 2: the chosen rate on the other seeds."""
        return [  # seed by seed: a bench cut short still has whole seeds
            RunSpec("eval", task, strategy, seed, chosen[(task, strategy)])
            for seed in self.seeds[1:]
            for task in self.tasks
            for strategy in self.every_seed_strategies()
        ]

    def privacy_runs(self, chosen: dict[tuple[str, str], float]) -> list[RunSpec]:
        """Stage 3: fpl with client-level DP at each ε, and with DP-SGD (text), every seed."""
        if METHOD not in self.strategies:
            return []
        runs = []
        seeds = self.seeds[: self.privacy_seeds]
        for task in self.tasks:
            if self.privacy_tasks is not None and task not in self.privacy_tasks:
                continue
            lr = chosen[(task, METHOD)]
            for eps in self.dp_epsilons:
                runs += [RunSpec("privacy", task, METHOD, s, lr, dp_epsilon=eps) for s in seeds]
            for sec_eps in self.secure_aggregation_epsilons:
                runs += [
                    RunSpec(
                        "privacy", task, METHOD, s, lr, dp_epsilon=sec_eps, secure_aggregation=True
                    )
                    for s in seeds
                ]
            if task == "text":
                for eps in self.dp_sgd_epsilons:
                    runs += [
                        RunSpec("privacy", task, METHOD, s, lr, dp_sgd_epsilon=eps) for s in seeds
                    ]
        return runs

    def compression_runs(self, chosen: dict[tuple[str, str], float]) -> list[RunSpec]:
        """Stage 4: fpl with each lossy upload compression, on the compression seeds."""
        if METHOD not in self.strategies:
            return []
        seeds = self.seeds[: self.compression_seeds]
        return [  # seed by seed, like the eval stage
            RunSpec("compression", task, METHOD, s, chosen[(task, METHOD)], upload_compression=m)
            for s in seeds
            for task in self.tasks
            if self.compression_tasks is None or task in self.compression_tasks
            for m in self.upload_compressions
        ]

    def scenario_runs(self, chosen: dict[tuple[str, str], float]) -> list[RunSpec]:
        """Stage 5: the scenario strategies at their chosen rates on each hard scenario."""
        strategies = [
            s
            for s in self.strategies
            if self.scenario_strategies is None or s in self.scenario_strategies
        ]
        return [  # seed by seed, like the eval stage
            RunSpec("scenario", task, strategy, seed, chosen[(task, strategy)], scenario=scenario)
            for seed in self.seeds[: self.scenario_seeds]
            for task in self._tasks(self.scenario_tasks)
            for scenario in self.scenarios
            for strategy in strategies
        ]

    def ablation_runs(self, chosen: dict[tuple[str, str], float]) -> list[RunSpec]:
        """Stage 6: fpl without each part, on the ablation scenarios, at fpl's chosen rate."""
        return [
            RunSpec(
                "ablation",
                task,
                METHOD,
                seed,
                chosen[(task, METHOD)],
                scenario=scenario,
                ablation=ablation,
            )
            for seed in self.seeds[: self.ablation_seeds]
            for task in self._tasks(self.ablation_tasks)
            for scenario in self.ablation_scenarios
            if scenario == DEFAULT_SCENARIO or seed in self._hard_ablation_seeds()
            for ablation in self.ablations
        ]

    def _hard_ablation_seeds(self) -> tuple[int, ...]:
        count = (
            self.ablation_seeds if self.hard_ablation_seeds is None else self.hard_ablation_seeds
        )
        return self.seeds[:count]

    def reference_of(self, spec: RunSpec) -> RunSpec:
        """The full-fpl run an ablation is paired with: same task, scenario, seed and rate."""
        stage = (
            "scenario"
            if spec.scenario != DEFAULT_SCENARIO
            else ("tune" if spec.seed == self.seeds[0] else "eval")
        )
        return RunSpec(
            stage, spec.task, METHOD, spec.seed, spec.learning_rate, scenario=spec.scenario
        )

    def total_runs(self) -> int:
        """How many federations the whole plan runs."""
        chosen = {(t, s): 0.0 for t in self.tasks for s in self.strategies}
        return (
            len(self.tune_runs())
            + len(self.eval_runs(chosen))
            + len(self.privacy_runs(chosen))
            + len(self.compression_runs(chosen))
            + len(self.scenario_runs(chosen))
            + len(self.ablation_runs(chosen))
        )

    def describe(self) -> dict[str, object]:
        """The plan as JSON-ready data (written into the report)."""
        return {
            "mode": self.mode,
            "clients": self.clients,
            "seeds": list(self.seeds),
            "tasks": {t: vars(s) for t, s in self.tasks.items()},
            "strategies": list(self.strategies),
            "lr_factors": list(self.lr_factors),
            "base_rates": {f"{t}/{s}": r for (t, s), r in sorted(self.base_rates.items())},
            "tuned_strategies": list(self.tuned_strategies or self.strategies),
            "eval_strategies": self.every_seed_strategies(),
            "dp_epsilons": list(self.dp_epsilons),
            "secure_aggregation_epsilons": list(self.secure_aggregation_epsilons),
            "dp_sgd_epsilons": list(self.dp_sgd_epsilons),
            "clients_per_process": self.clients_per_process,
            "torch_threads": self.torch_threads,
            "device": self.device,
            "insecure": self.insecure,
            "target_fraction": self.target_fraction,
            "privacy_seeds": list(self.seeds[: self.privacy_seeds]),
            "privacy_tasks": list(self.privacy_tasks or self.tasks),
            "upload_compressions": list(self.upload_compressions),
            "compression_seeds": list(self.seeds[: self.compression_seeds]),
            "compression_tasks": [
                t
                for t in self.tasks
                if self.compression_tasks is None or t in self.compression_tasks
            ],
            "data_root": None if self.data_root is None else str(self.data_root),
            "scenarios": list(self.scenarios),
            "scenario_strategies": list(self.scenario_strategies or self.strategies),
            "scenario_seeds": list(self.seeds[: self.scenario_seeds]),
            "scenario_tasks": self._tasks(self.scenario_tasks),
            "ablations": list(self.ablations),
            "ablation_scenarios": list(self.ablation_scenarios),
            "ablation_seeds": list(self.seeds[: self.ablation_seeds]),
            "ablation_tasks": self._tasks(self.ablation_tasks),
            "total_runs": self.total_runs(),
        }


def lr_grid(
    task: str, strategy: str, factors: tuple[float, ...], *, base: float | None = None
) -> list[float]:
    """Candidate learning rates: ``base`` (default: the default of (task, strategy)) times
    each factor."""
    if base is None:
        base = strategy_spec(strategy).learning_rate(task)
    return sorted({float(f"{base * f:.3g}") for f in factors})


def full_plan() -> BenchPlan:
    """``make bench``: the committed report's plan, about an hour on a 2-core machine.

    Every strategy on the 6 bundled silos per task, at a budget that moves text prompts
    well off the prior (four rounds of eight local steps, 12 texts of 48 tokens per step:
    fpl reaches about 74 % mean test accuracy on the clinics, where two rounds of three
    steps left every prompt strategy at the prior's predictions). The four prompt
    strategies run on three seeds; the LoRA and full-model baselines on the first seed
    only (text full-fedavg alone takes about 3.5 minutes a run here). The ablations of fpl
    on the clinics with two seeds (paired with full fpl), the two hard scenarios of 6 silos
    (misleading metadata, concept shift) with the four prompt strategies on the first seed,
    and DP-FedAvg and DP-SGD at ε = 8 on the text task with one seed. One learning rate per
    (task, strategy), no grid: :data:`VALIDATED_RATES` (chosen on validation by ``make
    bench-lr``), the default elsewhere. Upload compression has its own plan
    (``--compression``), "many small clinics" the scenario plan (``--scenarios``). 66
    federations.
    """
    return BenchPlan(
        mode="full",
        clients=6,
        seeds=(0, 1, 2),
        tasks={
            "text": TaskSettings(rounds=4, local_steps=8, batch_size=12, max_length=48),
            "vision": TaskSettings(rounds=4, local_steps=8, batch_size=16, max_images=1200),
        },
        lr_factors=(1.0,),
        base_rates=dict(VALIDATED_RATES),
        eval_strategies=PROMPT_STRATEGIES,
        dp_epsilons=(8.0,),
        secure_aggregation_epsilons=(),
        privacy_tasks=("text",),
        privacy_seeds=1,
        upload_compressions=(),
        scenarios=("misleading-metadata", "concept-shift"),
        scenario_strategies=PROMPT_STRATEGIES,
        scenario_seeds=1,
        ablations=tuple(ABLATIONS),
        ablation_seeds=2,
    )


#: The learning rates ``make bench-lr`` chose on seed 0's *validation* splits at ``make
#: bench``'s budget (reports/lr-grid/report.md, the default x 1/3, 1 and 3 of every prompt
#: strategy; ties to the smaller): the full plan runs these. Every other (task, strategy)
#: runs at the default of ``fedprompt up``, which the grid chose for fpl on both tasks and
#: for clustered on vision (LoRA and full-model fedavg were not in the grid).
VALIDATED_RATES: dict[tuple[str, str], float] = {
    ("text", StrategyName.LOCAL): 0.01,
    ("text", StrategyName.FEDAVG): 0.01,
    ("text", StrategyName.CLUSTERED): 0.01,
    ("vision", StrategyName.LOCAL): 0.01,
    ("vision", StrategyName.FEDAVG): 0.01,
}

#: The validation grid of ``make bench-lr``: these multiples of each strategy's default rate.
LR_GRID_FACTORS: tuple[float, ...] = (1 / 3, 1.0, 3.0)


def lr_grid_plan() -> BenchPlan:
    """``make bench-lr``: every prompt strategy's learning rate chosen on validation.

    The full plan's tune and eval stages on the bundled clinics, at its budget and seeds,
    for the four prompt strategies: each strategy's default rate times 1/3, 1 and 3 runs on
    the first seed, and the rate with the best mean *validation* accuracy (ties: the
    smaller) runs on the other seeds. No privacy, compression, scenario or ablation stage.
    Run names are the full plan's, so with ``--merge reports/full`` the default rate's runs
    are ``make bench``'s: 16 more tuning federations (about 17 minutes on 2 cores), then two
    seeds of each (task, strategy) whose chosen rate is not the default.
    """
    return replace(
        full_plan(),
        mode="lr-grid",
        strategies=PROMPT_STRATEGIES,
        lr_factors=LR_GRID_FACTORS,
        base_rates={},  # the grid is centred on the defaults
        dp_epsilons=(),
        dp_sgd_epsilons=(),
        privacy_seeds=0,
        scenarios=(),
        ablations=(),
    )


def gpu_plan() -> BenchPlan:
    """The full plan with a realistic training budget, for a machine with a CUDA GPU.

    Ten rounds of ten local steps on longer texts and more images, five seeds, the privacy
    curve and the upload compressions on both tasks with every seed, and the whole scenario
    × ablation matrix: every strategy on every hard scenario, and every ablation of fpl on
    every scenario (clinics included), both tasks, every seed. Client agents run with
    ``--device auto`` (CUDA with bf16 autocast where present). Its runs can be split over several bench processes
    (``--tasks``/``--strategies``/``--privacy-only --seeds``) and merged with
    ``--merge ... --report-only``.
    """
    return replace(
        full_plan(),
        mode="gpu",
        base_rates={},  # the CPU budget's choice need not hold at ten rounds of ten steps
        tasks={
            "text": TaskSettings(rounds=10, local_steps=10, batch_size=16, max_length=128),
            "vision": TaskSettings(rounds=10, local_steps=10, batch_size=32, max_images=3000),
        },
        dp_epsilons=(1.0, 4.0, 8.0),
        secure_aggregation_epsilons=(None, 8.0),
        privacy_tasks=None,
        privacy_seeds=None,
        upload_compressions=("fp16", "int8"),
        compression_tasks=None,
        compression_seeds=None,
        device="auto",
        seeds=(0, 1, 2, 3, 4),
        eval_strategies=None,
        scenarios=SCENARIOS[1:],
        scenario_strategies=None,
        scenario_seeds=None,
        ablations=tuple(ABLATIONS),
        ablation_scenarios=SCENARIOS,
        ablation_seeds=None,
    )


def compression_plan() -> BenchPlan:
    """``fedprompt bench --compression``: fpl with exact, fp16 and int8 uploads on a CPU.

    Five rounds of ten local steps on both tasks (more than the full plan's four of eight),
    every seed, ``fpl`` only (exact uploads in the tune and eval stages, fp16 and int8 in
    the compression stage), no privacy, scenario or ablation stage. About an hour on 2
    cores.
    """
    return replace(
        full_plan(),
        mode="compression",
        tasks={
            "text": TaskSettings(rounds=5, local_steps=10, batch_size=16, max_length=64),
            "vision": TaskSettings(rounds=5, local_steps=10, batch_size=16, max_images=1200),
        },
        strategies=(METHOD,),
        privacy_seeds=0,
        upload_compressions=("fp16", "int8"),
        compression_tasks=None,
        compression_seeds=None,
        scenarios=(),
        ablations=(),
    )


def scenario_plan() -> BenchPlan:
    """``fedprompt bench --scenarios``: ``make bench`` plus every hard scenario on two seeds.

    The full plan with "many small clinics" added (24 text silos of ~18 reviews, 30 image
    silos of ~100 images), every hard scenario on the first two seeds, and every ablation
    of fpl on misleading metadata and the concept shift (first seed), at the same budget
    and learning rates, so its runs are named like the full plan's: with ``--merge
    reports/full`` only the extra runs run (16 many-small federations, about 50 minutes on
    2 cores; 16 second-seed runs of the other two scenarios and 20 ablations there, about
    30 minutes).
    """
    return replace(
        full_plan(),
        mode="scenarios",
        scenarios=SCENARIOS[1:],
        scenario_seeds=2,
        ablation_scenarios=(DEFAULT_SCENARIO, "misleading-metadata", "concept-shift"),
        hard_ablation_seeds=1,
    )


def quick_plan() -> BenchPlan:
    """``make bench-quick``: the same report from one seed, fewer rounds and steps, no grid.

    One compression run (int8 on text) keeps the report's compression section.
    """
    plan = full_plan()
    return replace(
        plan,
        mode="quick",
        seeds=(0,),
        tasks={
            "text": TaskSettings(rounds=2, local_steps=2, batch_size=8, max_length=32),
            "vision": TaskSettings(rounds=2, local_steps=2, batch_size=16, max_images=900),
        },
        lr_factors=(1.0,),
        dp_epsilons=(1.0,),
        secure_aggregation_epsilons=(None,),
        upload_compressions=("int8",),
        compression_tasks=("text",),
        compression_seeds=1,
        scenarios=(),
        ablations=(),
    )


def tiny_plan() -> BenchPlan:
    """The integration test's plan: one task, two strategies, two seeds, one round.

    No compression stage: it would add federations to the test, and the report's
    compression section is unit-tested on hand-made records.
    """
    return BenchPlan(
        mode="tiny",
        clients=3,
        seeds=(0, 1),
        tasks={"text": TaskSettings(rounds=1, local_steps=2, batch_size=8, max_length=32)},
        strategies=(StrategyName.LOCAL, METHOD),
        lr_factors=(1.0,),
        dp_epsilons=(4.0,),
        secure_aggregation_epsilons=(),
        dp_sgd_epsilons=(),
        privacy_seeds=1,
        upload_compressions=(),
        clients_per_process=3,
        torch_threads=1,
    )
