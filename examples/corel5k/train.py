"""Trains a multilabel classifier (Corel-5k by default) on a split file's train
split, evaluating the val split after each epoch.

    python train.py --split-file corel5k.split --val-split test --size 160 --epochs 10
    torchrun --nproc_per_node 2 train.py --split-file corel5k.split
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.training import train_main  # noqa: E402
from task import TASK  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main(TASK, doc=__doc__))
