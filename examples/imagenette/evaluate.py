"""Evaluates a classifier saved by train.py on a split (top-1 accuracy).

python evaluate.py --split-file imagenette.split --checkpoint model.pt --split val
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.training import evaluate_main  # noqa: E402
from task import TASK  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main(TASK, doc=__doc__))
