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


def machine() -> dict[str, object]:
    """What a CPU result depends on: Python, torch and the core count."""
    import os
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count()}


def command(script: str, argv: list[str] | None) -> str:
    """The command line that produced a result, as the README quotes it."""
    import sys

    return f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
