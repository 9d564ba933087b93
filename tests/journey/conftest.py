import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from journey_support import browser, ecosystem, steps  # noqa: F401  (fixtures)
