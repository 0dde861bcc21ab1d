import sys
from pathlib import Path

# tests import their helpers (tests/lakeutil.py) by name
sys.path.insert(0, str(Path(__file__).parent))
