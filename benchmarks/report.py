"""What every benchmark ends with: its JSON document on stdout, and in a file when asked."""

from __future__ import annotations

import json
from pathlib import Path


def emit(doc: dict[str, object], out: Path | None) -> None:
    """Print ``doc`` as indented JSON; also write it to ``out`` (the results file) when given."""
    text = json.dumps(doc, indent=1)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
