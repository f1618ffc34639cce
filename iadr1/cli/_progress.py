"""The CLI's one progress display: rich bars, one per task, drawn from the core's `on_progress` callbacks.

The core never draws; it calls `on_progress(task, done, total)` (`iadr1.data.build.build_data`,
`iadr1.data.synthetic.make_dataset`) or `on_progress(task, done, total, info)` (`iadr1.demo.run_demo`), and a
command passes the callback this module builds:

    with ProgressBars(console) as on_progress:
        build_data(..., on_progress=on_progress)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class ProgressBars:
    """A context whose value is the `on_progress(task, done, total, info="")` callback: a task's first call
    adds its bar (description = the task name), later calls move it; `total` None is an open-ended bar and
    `info` a short text after the bar (the latest loss, say).

    `transient`: the bars vanish when the context ends (a command whose summary follows), else they stay as
    the record of each step. `disable` draws nothing (a log file gets no bar, nor a blank line).
    """

    def __init__(self, console: Console, transient: bool = False, disable: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column
        from rich.text import Text

        class _Info(ProgressColumn):
            # The only column that gives way on a narrow screen: cut with an ellipsis, never wrapped.
            def render(self, task: Any) -> Text:
                return Text(task.fields.get("info", ""), no_wrap=True, overflow="ellipsis")

        def fixed() -> Column:
            return Column(no_wrap=True)

        self._progress = Progress(
            TextColumn("[bold]{task.description}", table_column=fixed()),
            BarColumn(bar_width=20, table_column=fixed()),
            MofNCompleteColumn(table_column=fixed()),
            TimeElapsedColumn(table_column=fixed()),
            TimeRemainingColumn(table_column=fixed()),
            _Info(),
            console=console,
            transient=transient,
            disable=disable,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBars:
        self._progress.start()
        return self

    def __call__(self, task: str, done: int, total: int | None, info: str = "") -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total, info=info)
        self._progress.update(self._tasks[task], completed=done, total=total, info=info)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
