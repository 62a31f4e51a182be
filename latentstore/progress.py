"""One progress bar for every long command: rich, on stderr (so `--json` on stdout stays clean), with
counts, an info field, elapsed and remaining time; nothing at all when disabled (tests, `--json`)."""

from __future__ import annotations


class Bar:
    """`with Bar("encode", total, "slices", enabled=progress) as bar: bar.advance(n, info="...")`.

    Args:
        label: the stage name shown on the left.
        total: the number of units, or None when unknown.
        unit: what is counted ("scans", "slices", "steps").
        enabled: False draws nothing.
        completed: units already done (a resumed run).
    """

    def __init__(self, label: str, total: int | None, unit: str = "", enabled: bool = True, completed: int = 0):
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True),
        )  # fmt: skip
        self.task = self.progress.add_task(label, total=total, completed=completed, info="")

    def __enter__(self) -> "Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, **({"info": info} if info is not None else {}))

    def update(self, completed: int, info: str | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, **({"info": info} if info is not None else {}))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
