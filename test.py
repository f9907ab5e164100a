#!/usr/bin/env python
"""Stage 3: score a linear-evaluation, fine-tuning or supervised checkpoint on the test split,
and, from any backbone checkpoint, kNN accuracy, top-k retrieval, feature export and maps.

Example: python test.py --dataset cifar10 --backbone conv4 --seed 1 --knn 200 --retrieval 10 \
  --checkpoint ./checkpoint/relationnet/cifar10/relationnet_cifar10_conv4_seed_1_epoch_100_linear_evaluation.tar

The stage is experiments/testing.py; this file only prepares the process and runs it, so that
importing it changes nothing.
"""

from utils.entry import start

if __name__ == "__main__":
    start()  # first: threads, allocator and a one-line Ctrl-C are set before torch loads
    from experiments.stage import run_main
    from experiments.testing import main

    run_main(main)
