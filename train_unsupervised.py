#!/usr/bin/env python
"""Stage 1: train a backbone with a method of the registry and save its checkpoints.

Example: python train_unsupervised.py --dataset cifar10 --method relationnet --backbone conv4 \
             --data_size 64 --K 4 --epochs 3 --seed 1
On several GPUs or processes: torchrun --nproc_per_node N train_unsupervised.py ... (see
utils/distributed.py); --data_size is then the batch of each process.

The stage is experiments/pretraining.py; this file only prepares the process and runs it, so that
importing it changes nothing.
"""

from utils.entry import start

if __name__ == "__main__":
    start()  # first: threads, allocator and a one-line Ctrl-C are set before torch loads
    from experiments.pretraining import main
    from experiments.stage import run_main

    run_main(main)
