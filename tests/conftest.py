import sys
from pathlib import Path

# Tests import the project's packages and tests.simkit from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
