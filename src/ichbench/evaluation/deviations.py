"""Table 1's `notes` for a row: the run's own remarks plus a pointer to the row's section of docs/DEVIATIONS.md."""
from __future__ import annotations

from typing import Any

DOC = "docs/DEVIATIONS.md"


def anchor(method: str) -> str:
    """The Markdown anchor of a row's heading in docs/DEVIATIONS.md (headings are the `methods:` keys)."""
    return method.lower()


def notes(method: str, record: dict[str, Any]) -> str:
    """'; '-joined notes of a row's run record (e.g. a training subset), what its recipe changed that a
    reader of the paper would not expect (bf16, an epoch that is a number of steps), and where its
    differences from the paper and the references are listed."""
    parts = list(record.get("notes", []))
    params = record.get("params", {})
    if params.get("precision") == "bf16":
        parts.append("bf16 autocast")
    if params.get("steps_per_epoch"):
        parts.append(f"epoch = {params['steps_per_epoch']} steps")
    parts.append(f"differences: {DOC}#{anchor(method)}")
    return "; ".join(parts)
