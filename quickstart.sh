#!/usr/bin/env bash
# The README's quick start in one command: set up .venv (created when missing) with
# requirements.txt and matplotlib (for the feature map), then the three stages on CIFAR-10:
# relationnet on a Conv-4 backbone with K 4 views per image for 3 epochs, a linear classifier
# on the frozen backbone for 10 epochs, and the test split, with a PCA map of its features.
#
#   bash quickstart.sh                   # CIFAR-10 from $SSL_DATA_ROOT, or downloaded into ./data
#   bash quickstart.sh --device cuda     # flags all three stages share go to each of them
#   bash quickstart.sh --overwrite       # run again over the files of an earlier quick start
#   bash quickstart.sh --dry-run         # print the commands, run nothing
#
# Flags passed on to the stages: --device, --gpu, --data_root, --checkpoint_dir,
# --no_download, --num_workers (see docs/stages.md).
set -euo pipefail

# Paths the caller gives are read from the caller's folder; the stages run in the repository's.
caller=$PWD
absolute() {
    case $1 in
        /*) printf '%s' "$1" ;;
        *) printf '%s' "$caller/$1" ;;
    esac
}

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

dry_run=0
overwrite=()
shared=()
checkpoint_dir=checkpoint
if [ -n "${SSL_DATA_ROOT:-}" ]; then
    SSL_DATA_ROOT=$(absolute "$SSL_DATA_ROOT")
    export SSL_DATA_ROOT
fi
data_root=${SSL_DATA_ROOT:-./data} # the stages' default
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run | --dry_run) dry_run=1 ;;
        --overwrite) overwrite=(--overwrite) ;;
        -h | --help)
            usage
            exit 0
            ;;
        --no_download) shared+=("$1") ;;
        --device | --gpu | --data_root | --checkpoint_dir | --num_workers)
            if [ $# -lt 2 ]; then
                echo "quickstart.sh: error: $1 needs a value" >&2
                exit 2
            fi
            value=$2
            case $1 in
                --checkpoint_dir) value=$(absolute "$2") checkpoint_dir=$value ;;
                --data_root) value=$(absolute "$2") data_root=$value ;;
            esac
            shared+=("$1" "$value")
            shift
            ;;
        --device=* | --gpu=* | --num_workers=*) shared+=("$1") ;;
        --data_root=* | --checkpoint_dir=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}" # as two words, read by the case above next
            continue
            ;;
        *)
            echo "quickstart.sh: error: $1 is not a flag of the quick start (it takes --device, --gpu," \
                "--data_root, --checkpoint_dir, --no_download, --num_workers, --overwrite, --dry-run);" \
                "other settings: run the stages yourself (docs/stages.md)" >&2
            exit 2
            ;;
    esac
    shift
done
cd "$(dirname "$0")"

python=.venv/bin/python
folder=$checkpoint_dir/relationnet/cifar10
header=relationnet_cifar10_conv4_seed_1
pretrained=$folder/${header}_epoch_3.tar
classifier=$folder/${header}_epoch_10_linear_evaluation.tar
feature_map=$folder/${header}_epoch_10_linear_evaluation_test_pca.png
test_log=$folder/log_${header}_epoch_10_linear_evaluation_test.csv

# ${array[@]+...}: an empty array expands to nothing under `set -u` in every bash.
stage1=("$python" train_unsupervised.py --dataset cifar10 --method relationnet --backbone conv4
    --K 4 --data_size 64 --epochs 3 --seed 1 ${shared[@]+"${shared[@]}"} ${overwrite[@]+"${overwrite[@]}"})
stage2=("$python" train_linear_evaluation.py --dataset cifar10 --backbone conv4 --epochs 10 --seed 1
    --checkpoint "$pretrained" ${shared[@]+"${shared[@]}"} ${overwrite[@]+"${overwrite[@]}"})
stage3=("$python" test.py --dataset cifar10 --backbone conv4 --seed 1 --checkpoint "$classifier"
    --feature_map pca --map_points 1000 ${shared[@]+"${shared[@]}"})
setup=("$python" -m pip install --quiet --disable-pip-version-check -r requirements.txt matplotlib)

show() { # one command as a shell would read it back
    printf '%q ' "$@"
    echo
}

if [ "$dry_run" = 1 ]; then
    [ -x "$python" ] || echo "python3 -m venv .venv"
    show "${setup[@]}"
    show "${stage1[@]}"
    show "${stage2[@]}"
    show "${stage3[@]}"
    exit 0
fi

if [ ! -x "$python" ]; then
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "quickstart.sh: error: needs python3 3.10 or newer on the PATH to create .venv" >&2
        exit 1
    fi
    echo "== Creating .venv"
    python3 -m venv .venv
fi
echo "== Installing requirements.txt and matplotlib into .venv (a check when they are there)"
"${setup[@]}"

echo "== CIFAR-10 from ${data_root} (downloaded there when missing, 170 MB; set SSL_DATA_ROOT or pass --data_root)"
SECONDS=0
echo
echo "== 1/3 Pretraining: relationnet, Conv-4, K 4, batch 64, 3 epochs"
"${stage1[@]}"
echo
echo "== 2/3 Linear evaluation: the frozen backbone, a linear classifier for 10 epochs"
"${stage2[@]}"
echo
echo "== 3/3 Test split, and a PCA map of 1,000 test features"
"${stage3[@]}"

accuracy=$("$python" -c 'import csv, sys; print(list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))[-1]["accuracy"])' "$test_log")
echo
echo "Quick start done in ${SECONDS} s: test accuracy ${accuracy} % (CIFAR-10 test split)"
echo "  files (checkpoints, config_*.json, log_*.csv): $folder/"
echo "  feature map: $feature_map"
