import sys
from pathlib import Path

# tests import their small builders (tests/builders.py) as a top-level module
sys.path.insert(0, str(Path(__file__).parent))
