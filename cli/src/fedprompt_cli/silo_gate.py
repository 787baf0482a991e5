"""The check of ``--data-root`` before ``fedprompt up`` or ``fedprompt bench`` starts anything.

The checks themselves are the client agent's
(:func:`fedprompt_client_agent.data.silo_check.check_data_root`, which reads the folders
with the loaders' own functions); this module prints every problem (a table on a
terminal, one plain line per problem otherwise) and says whether the run may start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from fedprompt_client_agent.data.silo_check import SiloCheck

__all__ = ["BAD_SILOS", "checked_data_root"]

#: Exit code when the silo folders are not ready (nothing was started).
BAD_SILOS = 2


def checked_data_root(
    root: Path, console: Console, *, needed: int | None = None
) -> SiloCheck | None:
    """Check every silo folder under ``root``; print the problems and return None if any.

    Parameters
    ----------
    root : Path
        The data root (one sub-folder per silo).
    console : Console
        Where the problems are printed.
    needed : int, optional
        Silos the run needs (``fedprompt up --clients``); fewer is a problem too.

    Returns
    -------
    SiloCheck or None
        The check (its ``task`` read from the folders) when the silos are ready, else None.
    """
    # imported here: the client agent's data room is plain Python (numpy, json, csv) but
    # the other commands need none of it
    from fedprompt_client_agent.data.silo_check import SiloProblem, check_data_root

    check = check_data_root(root)
    problems = list(check.problems)
    if needed is not None and check.ok and len(check.silos) < needed:
        problems.append(
            SiloProblem(
                "",
                "",
                f"{root} holds {len(check.silos)} silo folders, {needed} needed",
                f"pass --clients {len(check.silos)} or add silo folders",
            )
        )
    if not problems:
        console.print(
            f"silo folders in {root}: {len(check.silos)} {check.modality} silos "
            f"(task {check.task}), {len(check.labels)} labels, no problem found",
            soft_wrap=True,
            highlight=False,
        )
        return check
    silos = len({p.silo for p in problems if p.silo})
    console.print(
        f"[bold red]{len(problems)} problem(s) in {silos} silo folder(s) under {escape(str(root))}"
        "[/]: nothing was started; fix them and run again.",
        soft_wrap=True,
    )
    if console.is_terminal:
        table = Table(show_lines=True)
        for column in ("silo", "file", "problem", "fix"):
            table.add_column(column, overflow="fold")
        for p in problems:
            table.add_row(
                escape(p.silo or "(data root)"), escape(p.where), escape(p.problem), escape(p.fix)
            )
        console.print(table)
    else:
        for p in problems:
            console.print(escape(p.line()), soft_wrap=True, highlight=False)
    return None
