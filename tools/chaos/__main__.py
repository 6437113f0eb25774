"""``python -m tools.chaos unit ...``: the unit process of a chaos run (:mod:`tools.chaos.unit`)."""

import sys

from tools.chaos.unit import main

if __name__ == "__main__":
    sys.exit(main())
