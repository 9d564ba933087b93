"""A benchmark's "before": the kit's and one service's sources as of a revision, side by side with
the working tree in the same run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export_baseline(revision: str, into: Path, service: str, *more: str) -> Path:
    """The kit's and `service`'s sources at `revision` (git archive; the working tree is untouched),
    and the `more` paths named."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "libs/kit/src", f"services/{service}/src", *more],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {revision} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into
