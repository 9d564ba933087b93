"""Run every benchmark in bench/ (files named *_bench.py) and print their reports.

token_bench.py also needs `wrk` on PATH and node-oidc-provider installed (`npm install`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).parent
    only = sys.argv[1:]
    failed = []
    for script in sorted(here.glob("*_bench.py")):
        if only and script.stem.removesuffix("_bench") not in only:
            continue
        print(f"== {script.name}", flush=True)
        # As modules from the root, so a bench can use a service's test helpers by module path.
        if subprocess.run([sys.executable, "-m", f"bench.{script.stem}"], cwd=here.parent).returncode != 0:
            failed.append(script.name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
