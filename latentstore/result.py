"""What a stage returns: a result that renders itself on the terminal and has `to_dict()` for `--json`.

Every CLI command is a few lines: call the stage function, then `emit(result, json)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any


class Result:
    """Base of stage results: `to_dict()` (JSON-ready) and `__rich__()` (a rich renderable)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) if is_dataclass(self) else dict(vars(self))

    def __rich__(self):
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for k, v in self.to_dict().items():
            table.add_row(str(k), str(v))
        return table

    def to_json(self) -> str:
        return to_json(self.to_dict())


def _strict(v: Any) -> Any:
    """NaN and infinities become null: `json.dumps` would write `NaN`, which strict JSON readers refuse."""
    if hasattr(v, "tolist") and hasattr(v, "dtype"):  # numpy scalars and arrays, without importing numpy
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def to_json(data: Any) -> str:
    """Strict JSON (no NaN) of a result's numbers; anything else JSON lacks is written as its string."""
    return json.dumps(_strict(data), indent=2, default=str, allow_nan=False)


@dataclass
class Report(Result):
    """A table-shaped result (the eval commands): `rows[0]` is the header, `data` the full numbers.

    Indexing (`report["model_id"]`) reads `data`, so callers use it like the dict it replaces.
    """

    title: str
    rows: list[list[str]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        header, *body = self.rows
        table = Table(*header, title=self.title)
        for row in body:
            table.add_row(*row)
        return Group(table, *(Text(n) for n in self.notes))


def emit(console, result: Result, as_json: bool) -> None:
    """Print `result` as JSON on stdout, or rendered on `console`."""
    if as_json:
        print(result.to_json())
    else:
        console.print(result, highlight=False, soft_wrap=True)
