#!/usr/bin/env python
"""Stage 2: train a linear classifier on a frozen backbone (or fine-tune it with --finetune, or
solve a logistic regression on its features with --classifier logistic).

Example: python train_linear_evaluation.py --dataset cifar10 --backbone conv4 --seed 1 \
             --checkpoint ./checkpoint/relationnet/cifar10/relationnet_cifar10_conv4_seed_1_epoch_3.tar

The stage is experiments/linear_evaluation.py; this file only prepares the process and runs it, so that
importing it changes nothing.
"""

from utils.entry import start

if __name__ == "__main__":
    start()  # first: threads, allocator and a one-line Ctrl-C are set before torch loads
    from experiments.linear_evaluation import main
    from experiments.stage import run_main

    run_main(main)
