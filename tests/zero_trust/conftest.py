import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from zero_trust_support import ecosystem  # noqa: F401  (fixture)
