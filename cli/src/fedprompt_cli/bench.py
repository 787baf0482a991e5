"""``fedprompt bench``: run the evaluation plan and write ``reports/<tag>/``.

Every run is a real ``fedprompt up`` federation on loopback (clusterer, coordinator and the
client agents as separate processes; several agents may share one host process, each
still its own gRPC client), with bytes counted on the wire by the coordinator. Silos are
made once per (task, scenario, seed) and reused by every strategy and ablation of that
seed, so all of them see exactly the same data. Finished runs are kept in ``runs.jsonl`` inside the
report folder; a re-started bench skips them (``--resume`` is the default).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedprompt_cli.bench_analysis import choose_learning_rates
from fedprompt_cli.bench_plan import (
    ABLATIONS,
    DEFAULT_SCENARIO,
    METHOD,
    SCENARIO_SILOS,
    BenchPlan,
    RunSpec,
)
from fedprompt_cli.bench_report import write_report
from fedprompt_cli.processes import ChildFailedError, console_script
from fedprompt_cli.up import INTERRUPTED, UpOptions, run_up

__all__ = ["BenchFailedError", "run_bench"]

RUNS_FILE = "runs.jsonl"
#: A scenario's truth beside its silo folders (``fedprompt_client_agent.tools.scenarios``).
SIDECAR = "scenario.json"


class BenchFailedError(RuntimeError):
    """A federation of the plan failed; the message says which and why."""


def silos_folder(work: Path, spec: RunSpec) -> Path:
    """Where the silos of a run's (task, scenario, seed) are written, once for all its runs."""
    suffix = "" if spec.scenario == DEFAULT_SCENARIO else f"-{spec.scenario}"
    return work / "silos" / f"{spec.task}{suffix}-s{spec.seed}"


def make_silos_argv(spec: RunSpec, plan: BenchPlan, out: Path) -> list[str]:
    """``fedprompt-make-silos`` of a run's silos: its task, scenario, seed and silo count.

    ``many-small`` sets its own sizes, so the task's ``max_images`` is not passed to it.
    """
    settings = plan.tasks[spec.task]
    argv = [
        console_script("fedprompt-make-silos"),
        "--task", spec.task,
        "--num-silos", str(plan.clients_of(spec)),
        "--seed", str(spec.seed),
        "--out", str(out),
    ]  # fmt: skip
    if spec.scenario != DEFAULT_SCENARIO:
        argv += ["--scenario", spec.scenario]
    if settings.max_images is not None and spec.scenario not in SCENARIO_SILOS:
        argv += ["--max-images", str(settings.max_images)]
    return argv


def _make_silos(spec: RunSpec, plan: BenchPlan, out: Path) -> Path:
    """Write the silos of one (task, scenario, seed) once; every run of it reuses them.

    A plan on the user's own silos (``data_root``) makes none: every run reads those.
    """
    if plan.data_root is not None:
        return plan.data_root
    if out.is_dir() and any((p / "metadata.json").exists() for p in out.iterdir()):
        return out
    task, seed = spec.task, spec.seed
    argv = make_silos_argv(spec, plan, out)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchFailedError(
            f"making {task} silos ({spec.scenario}, seed {seed}) failed:\n{proc.stderr}"
        )
    return out


def true_groups(silos: Path) -> dict[str, str] | None:
    """Each silo's true group from a scenario's ``scenario.json`` (None: no sidecar).

    The sidecar lies beside the silo folders, which is never where a client or the
    coordinator looks; the report groups accuracies by it (a misleading silo's metadata
    names another group).
    """
    path = silos / SIDECAR
    if not path.is_file():
        return None
    truth = json.loads(path.read_text())
    return {name: str(t["true_group"]) for name, t in truth.get("silos", {}).items()}


def _options(spec: RunSpec, plan: BenchPlan, work: Path, silos: Path) -> UpOptions:
    settings = plan.tasks[spec.task]
    options = UpOptions(
        clients=plan.clients_of(spec),
        rounds=settings.rounds,
        local_steps=settings.local_steps,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        seed=spec.seed,
        device=plan.device,
        insecure=plan.insecure,
        run_dir=work / spec.name,
        model_dir=None,
        data_root=silos,
        timeout_s=1800.0,
        torch_threads=plan.torch_threads,
        strategy=spec.strategy,
        task=spec.task,
        learning_rate=spec.learning_rate,
        dp_epsilon=spec.dp_epsilon,
        dp_sgd_epsilon=spec.dp_sgd_epsilon,
        max_images=settings.max_images,
        clients_per_process=plan.clients_per_process,
        upload_compression=spec.upload_compression,
        secure_aggregation=spec.secure_aggregation,
    )
    return with_ablation(options, spec.ablation)


def with_ablation(options: UpOptions, ablation: str | None) -> UpOptions:
    """The options with one part of fpl taken away (:data:`ABLATIONS`; None: full fpl).

    Every ablation goes through a knob that ``fedprompt up`` passes on: λ, the server
    weighting and the server optimizer (with its η) to the coordinator, the prompt segment
    sizes to every client agent, and no clusterer (every client in cluster 0).
    """
    if ablation is None:
        return options
    knobs = ABLATIONS[ablation]
    return replace(
        options,
        contrastive_weight=knobs.contrastive_weight,
        server_weighting=knobs.server_weighting,
        server_optimizer=knobs.server_optimizer,
        server_lr=knobs.server_lr,
        proximal_mu=knobs.proximal_mu,
        personalize_steps=knobs.personalize_steps,
        refine_after_rounds=knobs.refine_after_rounds,
        n_global=knobs.n_global,
        n_local=knobs.n_local,
        clustering=knobs.clustering,
    )


def run_settings(spec: RunSpec, plan: BenchPlan) -> dict[str, Any]:
    """What a run's name does not say: its task's budget and its number of silos."""
    return {**asdict(plan.tasks[spec.task]), "clients": plan.clients_of(spec)}


def _same_settings(record: dict[str, Any], plan: BenchPlan) -> bool:
    """Whether a finished run was made with this plan's settings for its task.

    Records written before the settings were recorded carry none and are taken as they
    are (the committed reports' ``runs.jsonl``); a record of a task the plan does not run
    is never asked for.
    """
    settings = record.get("settings")
    task = record["spec"]["task"]
    if settings is None or task not in plan.tasks:
        return True
    spec = RunSpec(**{k: v for k, v in record["spec"].items() if k != "name"})
    return bool(settings == run_settings(spec, plan))


def _load_done(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            done[record["spec"]["name"]] = record
    return done


class _Runner:
    """Runs specs one after the other, with a progress bar and a log of every federation."""

    def __init__(
        self,
        plan: BenchPlan,
        out: Path,
        work: Path,
        console: Console,
        *,
        merge: tuple[Path, ...] = (),
        report_only: bool = False,
    ) -> None:
        self.plan = plan
        self.out = out
        self.work = work
        self.console = console
        self.report_only = report_only
        self.runs_path = out / RUNS_FILE
        self.done: dict[str, dict[str, Any]] = {}
        for other in merge:  # runs of the same plan made by another bench process
            self.done.update(_load_done(other / RUNS_FILE))
        self.done.update(_load_done(self.runs_path))
        # Run names do not say the budget: a record of another budget is not this plan's run
        stale = sorted(n for n, r in self.done.items() if not _same_settings(r, plan))
        for name in stale:
            del self.done[name]
        if stale:
            console.print(
                f"[yellow]{len(stale)} finished run(s) had other settings than this plan "
                f"(rounds, steps, batch, length, images or silos) and run again: "
                f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}[/]"
            )
        self.log_console = Console(
            file=open(out / "bench.log", "a"),  # noqa: SIM115 - closed in close()
            width=150,
            force_terminal=False,
        )

    def close(self) -> None:
        self.log_console.file.close()

    def run_all(
        self, specs: list[RunSpec], progress: Progress, task_id: Any
    ) -> list[dict[str, Any]]:
        records = []
        for spec in specs:
            progress.update(task_id, description=f"{spec.stage}: {spec.name}")
            if not self.report_only:
                records.append(self.run_one(spec))
            elif spec.name in self.done:
                records.append(self.done[spec.name])
            progress.advance(task_id)
        return records

    def run_one(self, spec: RunSpec) -> dict[str, Any]:
        key = spec.name
        if key in self.done:
            return self.done[key]
        silos = _make_silos(spec, self.plan, silos_folder(self.work, spec))
        options = _options(spec, self.plan, self.work, silos)
        self.log_console.rule(f"{spec.stage}: {spec.name}")
        started = time.monotonic()
        code = run_up(options, self.log_console)
        if code == INTERRUPTED:  # Ctrl-C: stop the bench (finished runs are kept)
            raise KeyboardInterrupt
        if code != 0:  # one retry from scratch: a long bench should survive one bad start
            self.console.log(f"[yellow]{spec.name} failed (exit {code}); retrying once[/]")
            shutil.rmtree(options.run_dir, ignore_errors=True)
            started = time.monotonic()
            code = run_up(options, self.log_console)
        wall = time.monotonic() - started
        self.log_console.file.flush()
        if code != 0:
            raise BenchFailedError(
                f"run {spec.name} failed (exit {code}); see {self.out / 'bench.log'} and "
                f"{options.run_dir / 'logs'}"
            )
        summary = json.loads((options.run_dir / "summary.json").read_text())
        # Model snapshots and personal states are not needed once the summary is read
        # (full-fedavg writes ~90 MB per round and cluster); the logs stay.
        for bulky in ("coordinator", "clients"):
            shutil.rmtree(options.run_dir / bulky, ignore_errors=True)
        record: dict[str, Any] = {
            "spec": {**asdict(spec), "name": spec.name},
            "settings": run_settings(spec, self.plan),
            "wall_seconds": wall,
            "summary": summary,
        }
        truth = true_groups(silos)
        if truth is not None:  # the scenario's truth, which no federation process saw
            record["true_groups"] = truth
        with self.runs_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        self.done[key] = record
        self.console.log(f"{spec.name}: {wall:.0f} s, mean test acc {_final_mean(summary):.3f}")
        return record


def _final_mean(summary: dict[str, Any]) -> float:
    rounds = summary.get("rounds") or [{}]
    return float(rounds[-1].get("summary", {}).get("accuracy_mean", float("nan")))


def run_bench(
    plan: BenchPlan,
    out: Path,
    console: Console,
    *,
    work: Path | None = None,
    command: str = "fedprompt bench",
    merge: tuple[Path, ...] = (),
    report_only: bool = False,
    note: str = "",
    privacy_only: bool = False,
    compression_only: bool = False,
) -> int:
    """Run the whole plan (tune, eval, privacy, compression, scenarios, ablations) and write
    the report into ``out``.

    ``privacy_only`` and ``compression_only`` run just those stages (both: both), which
    needs a plan without a learning-rate grid: there is no choice to make.
    """
    stages_only = privacy_only or compression_only
    if stages_only and len(plan.lr_factors) > 1:
        console.print(
            "[red]--privacy-only and --compression-only need a plan without a learning-rate grid[/]"
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work = work or out / "work"
    (out / "plan.json").write_text(json.dumps(plan.describe(), indent=2, sort_keys=True))
    runner = _Runner(plan, out, work, console, merge=merge, report_only=report_only)
    started = time.monotonic()
    console.print(
        f"[bold]fedprompt bench[/] ({plan.mode}): {plan.total_runs()} federations of "
        f"{plan.clients} silos, seeds {list(plan.seeds)}, tasks {list(plan.tasks)}; "
        f"report in {out}"
    )
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("bench", total=plan.total_runs())
            if stages_only:  # no choice to make: the grid has one rate per strategy
                tune, chosen = [], untuned_learning_rates(plan)
                rest = plan.privacy_runs(chosen) if privacy_only else []
                rest += plan.compression_runs(chosen) if compression_only else []
                progress.update(bar, total=len(rest))
            else:
                tune = runner.run_all(plan.tune_runs(), progress, bar)
                chosen = choose_learning_rates(tune)
                if len(plan.lr_factors) == 1:  # a report of unfinished runs: no choice missing
                    chosen = {**untuned_learning_rates(plan), **chosen}
                rest = (
                    plan.eval_runs(chosen)
                    + plan.privacy_runs(chosen)
                    + plan.compression_runs(chosen)
                    + plan.scenario_runs(chosen)
                    + plan.ablation_runs(chosen)
                )
            records = tune + runner.run_all(rest, progress, bar)
    except (BenchFailedError, ChildFailedError) as exc:
        console.print(f"[bold red]bench failed[/]: {exc}")
        return 1
    except KeyboardInterrupt:
        console.print(
            f"[yellow]bench interrupted[/]: finished runs are in {runner.runs_path}; "
            "the same command resumes"
        )
        return INTERRUPTED
    finally:
        runner.close()
    elapsed = time.monotonic() - started
    meta = {
        "elapsed_seconds": elapsed,
        "note": note,
        "run_seconds_total": sum(r["wall_seconds"] for r in records),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": command,
        "report_only": report_only,
    }
    report = write_report(out, plan, records, meta)
    console.print(f"[bold green]report[/]: {report} ({elapsed / 60:.1f} min)")
    return 0


def untuned_learning_rates(plan: BenchPlan) -> dict[tuple[str, str], float]:
    """The only candidate rate of every (task, strategy) of a plan without a grid."""
    return {(t, s): plan.rates_of(t, s)[0] for t in plan.tasks for s in plan.strategies}


def plan_with_overrides(
    plan: BenchPlan,
    *,
    seeds: tuple[int, ...] | None,
    clients: int | None,
    tasks: tuple[str, ...] | None = None,
    skip_privacy: bool = False,
    skip_compression: bool = False,
    strategies: tuple[str, ...] | None = None,
    insecure: bool = False,
    data_root: tuple[Path, str, int] | None = None,
) -> BenchPlan:
    """The plan with the command line's ``--seeds`` / ``--silos`` / ``--tasks`` applied.

    ``skip_privacy`` and ``skip_compression`` each leave out only their own stage.
    ``data_root`` is ``(folder, task, silos)`` of the user's own (checked) silo folders:
    the plan keeps only that task, with as many clients as silos (``clients``: the first
    that many, by name).
    """
    if data_root is not None:
        root, task, count = data_root
        if task not in plan.tasks:
            raise ValueError(
                f"the silos in {root} are a {task} task, which the {plan.mode} plan does not "
                f"run (it runs {', '.join(plan.tasks)})"
            )
        if tasks and task not in tasks:
            raise ValueError(f"the silos in {root} are a {task} task, not {', '.join(tasks)}")
        if clients and clients > count:
            raise ValueError(f"--silos {clients}: {root} holds {count} silo folders")
        plan = replace(
            plan,
            tasks={task: plan.tasks[task]},
            data_root=root,
            # the user's silos are the only scenario: ablations run on them, and nothing
            # of the bundled tasks' hard scenarios applies
            scenarios=(),
            ablation_scenarios=(DEFAULT_SCENARIO,),
            # rates chosen on the bundled silos are not chosen on these: the defaults, and
            # --lr-grid chooses on their validation splits
            base_rates={},
            clients=clients or count,
            clients_per_process=max(plan.clients_per_process, clients or count),
        )
        clients = None
    if tasks:
        unknown = set(tasks) - set(plan.tasks)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; the plan has {sorted(plan.tasks)}")
        plan = replace(plan, tasks={t: s for t, s in plan.tasks.items() if t in tasks})
    if seeds:
        plan = replace(plan, seeds=seeds)
    if strategies:
        plan = replace(
            plan,
            strategies=strategies,
            ablations=plan.ablations if METHOD in strategies else (),
        )
    if skip_privacy:
        plan = replace(plan, privacy_seeds=0)
    if skip_compression:
        plan = replace(plan, compression_seeds=0)
    if insecure:
        plan = replace(plan, insecure=True)
    if clients:
        plan = replace(
            plan, clients=clients, clients_per_process=max(plan.clients_per_process, clients)
        )
    return plan
