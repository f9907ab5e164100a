"""Stage 2, run by train_linear_evaluation.py: train a linear classifier on a frozen backbone, fine-tune
it, or solve a logistic regression on its features."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from backbones import check_image_side
from backbones.features import extract_features
from datasets import DATASETS, load_dataset
from engine.checkpoint import check_backbone, read_checkpoint, refuse_other_than_finetuning, save_checkpoint
from engine.csv_log import write_csv
from engine.epoch_progress import resume_position
from engine.locks import RunLock
from engine.loop import Engine
from engine.plan import TrainingPlan
from engine.run_files import RunFiles, evaluation_header
from evaluation.linear import evaluate, score_logits, train_linear_epoch
from evaluation.logistic import fit_logistic_regression
from experiments.arguments import RunArguments, freeze
from experiments.cli import apply_gpu_flag
from experiments.evaluation_cli import stage2_parser
from experiments.options import stage2_model
from experiments.stage import (
    ResumePoint,
    backbone_inputs_normalised,
    finished_as_asked,
    inputs_entry,
    record_config,
    resume_point,
    run_seed,
    stage_backbone,
    stem_entry,
)
from experiments.validation import (
    VALIDATION_KEY,
    finetuning_monitor,
    stage2_validation,
    validation_features,
    validation_scores,
)
from methods import METHODS
from methods.standard import Standard
from utils.console import say
from utils.errors import UserError
from utils.runtime import format_duration, resolve_device
from utils.seeds import seed_everything

# A stage-2 checkpoint records which of these it is as its `kind`, so that a reader such as
# stage 3 knows it holds a trained classifier without guessing from its keys.
EVALUATION_KINDS = ("linear_evaluation", "logistic_regression", "finetune")


def evaluation_kind(args: RunArguments) -> str:
    """What this run's checkpoint holds, one of `EVALUATION_KINDS`."""
    if args.finetune:
        return "finetune"
    return {"linear": "linear_evaluation", "logistic": "logistic_regression"}[args.classifier]


def pretraining_method(args: argparse.Namespace, state: dict) -> str:
    """The stage-1 method names this stage's files; read it from the checkpoint or its path
    (`<checkpoint_dir>/<method>/<dataset>/...`) rather than defaulting to `standard`."""
    if args.method:
        return args.method
    if state.get("method") in METHODS:
        return state["method"]
    parents = Path(args.checkpoint).resolve().parts
    if len(parents) >= 3 and parents[-3] in METHODS:
        return parents[-3]
    raise UserError(f"cannot tell which method trained {args.checkpoint}: pass --method")


def pretraining_dataset(args: RunArguments, state: dict) -> str | None:
    """The stage-1 data set, from the checkpoint or its path; None when it cannot be told."""
    if state.get("dataset"):
        return state["dataset"]
    parents = Path(args.checkpoint).resolve().parts
    return parents[-2] if len(parents) >= 3 and parents[-2] in DATASETS else None


def frozen_features(
    backbone, train, test, device, checkpoint
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train features, train labels, test features, test labels, on `device`; features that are
    not finite are refused naming the `checkpoint` of the backbone."""
    start = time.time()
    train_features = extract_features(backbone, train, device, desc="Train features", checkpoint=checkpoint)
    test_features = extract_features(backbone, test, device, desc="Test features", checkpoint=checkpoint)
    say(
        f"[INFO] Features of {len(train)} training and {len(test)} test images computed once "
        f"in {time.time() - start:.1f}s (frozen backbone, eval mode, no augmentation)"
    )
    return train_features, train.labels.to(device), test_features, test.labels.to(device)


def linear_evaluation(
    model: Standard, features, args: RunArguments, seed: int, validation=None
) -> tuple[dict, list[dict]]:
    """Train the classifier for --epochs; returns the checkpoint entries that describe the run
    and the log's rows (with the accuracy on the `validation` features and labels, if any)."""
    train_features, train_labels, test_features, test_labels = features
    rows = []
    optimizer = model.lineval_optimizer
    for epoch in range(args.epochs):
        epoch_start = time.time()
        loss, accuracy = train_linear_epoch(
            model.classifier, optimizer, train_features, train_labels, args.data_size, seed, epoch
        )
        model.classifier.eval()
        test_result = score_logits(model.classifier(test_features).detach(), test_labels)
        seconds = time.time() - epoch_start
        rows.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "accuracy": accuracy,
                "test_accuracy": test_result["accuracy"],
                "test_loss": test_result["loss"],
                **validation_scores(model.classifier, validation),
                "seconds": round(seconds, 3),
            }
        )
        say(f"Epoch {epoch + 1}/{args.epochs} [{format_duration(seconds)}] loss: {loss:.4f}; acc: {accuracy:.2f}%")
    return {"epoch": args.epochs}, rows


def logistic_regression(model: Standard, features, args: RunArguments, validation=None) -> tuple[dict, list[dict]]:
    """Solve for the classifier; returns the checkpoint entries that describe the solution and
    the log's row (with the accuracy on the `validation` features and labels, if any)."""
    train_features, train_labels, test_features, test_labels = features
    start = time.time()
    fit = fit_logistic_regression(
        features=train_features,
        labels=train_labels,
        num_classes=model.classifier.out_features,
        C=args.logistic_c,
        max_iter=args.logistic_max_iter,
    )
    with torch.no_grad():
        model.classifier.weight.copy_(fit.weight)
        model.classifier.bias.copy_(fit.bias)
        model.classifier.eval()
        train_result = score_logits(model.classifier(train_features), train_labels)
        test_result = score_logits(model.classifier(test_features), test_labels)
    seconds = time.time() - start
    row = {
        "loss": train_result["loss"],
        "accuracy": train_result["accuracy"],
        "test_accuracy": test_result["accuracy"],
        "test_loss": test_result["loss"],
        "objective": fit.objective,
        "iterations": fit.iterations,
        **validation_scores(model.classifier, validation),
        "seconds": round(seconds, 3),
    }
    say(
        f"Logistic regression [{format_duration(seconds)}] C {args.logistic_c:g}, {fit.iterations} L-BFGS "
        f"iterations, objective {fit.objective:.6f}; loss: {train_result['loss']:.4f}; "
        f"acc: {train_result['accuracy']:.2f}%"
    )
    return {"classifier_kind": "logistic_regression", "objective": fit.objective, "iterations": fit.iterations}, [row]


def main(argv: list[str] | None = None) -> None:
    parser = stage2_parser()
    parsed = parser.parse_args(argv)
    apply_gpu_flag(parsed)
    device = resolve_device(parsed.device)
    state = read_checkpoint(parsed.checkpoint)
    stem = check_backbone(state, parsed.backbone, parsed.checkpoint, parsed.stem)
    # Frozen from here on, with the method and the seed recorded as resolved.
    args = freeze(parsed, method=pretraining_method(parsed, state), seed=run_seed(parsed, state))
    method_name, seed = args.method, args.seed
    say(f"[INFO] Setting SEED: {seed}")
    seed_everything(seed)
    if args.finetune:
        say("[INFO] Finetune set to True, the backbone will be finetuned.")

    source_dataset = pretraining_dataset(args, state)
    if source_dataset not in (None, args.dataset):
        say(f"[INFO] Cross-domain: backbone pretrained on {source_dataset}, evaluated on {args.dataset}")
    files = RunFiles(
        args.checkpoint_dir,
        method_name,
        args.dataset,
        evaluation_header(
            method_name,
            args.dataset,
            source_dataset,
            args.backbone,
            args.seed,
            args.id,
            args.epochs,
            args.finetune,
            args.label_fraction,
            args.classifier,
        ),
    )
    if args.resume and not args.finetune:
        raise UserError(
            f"--resume {args.resume}: only fine-tuning (--finetune) can be resumed; linear "
            "evaluation takes seconds, run it again"
        )
    with RunLock(files.lock):
        files.remove_temporary()
        resume = (
            resume_point(args, files, parser.resume_rules(), check_kind=refuse_other_than_finetuning)
            if args.resume
            else None
        )
        if resume is None and files.final.exists() and not args.overwrite:
            raise UserError(f"{files.final} exists: pass --overwrite to replace it or --id to keep both")
        if resume is None and files.last_checkpoint.exists() and not args.overwrite:
            raise UserError(
                f"{files.directory} holds an interrupted run {files.header}: pass --resume auto "
                "to continue it or --overwrite to start again"
            )
        if resume and finished_as_asked(resume, args.epochs):
            say(f"[INFO] Nothing left to do: run {files.header} is complete ({files.final})")
            return
        if resume and resume.state["epoch"] >= args.epochs and not resume.unfinished:
            raise UserError(
                f"nothing to resume: the run {files.header} is complete ({files.final}); pass "
                "--overwrite without --resume to train it again, or --id to keep both"
            )
        evaluate_backbone(args, state, stem, files, method_name, source_dataset, seed, device, resume)


def evaluate_backbone(
    args: RunArguments,
    state: dict,
    stem: str | None,
    files: RunFiles,
    method_name: str,
    source_dataset: str | None,
    seed: int,
    device,
    resume: ResumePoint | None = None,
) -> None:
    download = not args.no_download
    train = load_dataset(args.dataset, "train", args.data_root, download=download, image_size=args.image_size)
    test = load_dataset(args.dataset, "test", args.data_root, download=download, image_size=args.image_size)
    if bool((train.labels < 0).any()):
        raise UserError(f"the {args.dataset} training split has no labels for linear evaluation")
    train, validation, held_out = stage2_validation(args, state, source_dataset, train, seed)
    train = train.balanced_subset(args.train_subset, seed).labelled_fraction(args.label_fraction, seed)
    # The backbone sees images in the range its method trained it on.
    normalised = backbone_inputs_normalised(state, args.checkpoint)
    train, test = train.as_inputs(normalised), test.as_inputs(normalised)
    if args.label_fraction < 1:
        say(f"[INFO] Semi-supervised: {len(train)} labelled images ({args.label_fraction * 100:g}% of each class)")

    check_image_side(args.backbone, stem, train.side)
    backbone = stage_backbone(args.backbone, stem, device, state["backbone"])
    model = stage2_model(backbone, train.num_classes, args).to(device)
    source = {
        "source_checkpoint": str(args.checkpoint),
        "pretraining_method": method_name,
        "pretraining_dataset": source_dataset,
        "pretraining_epochs": state.get("epoch"),
    }
    stage = evaluation_kind(args)
    # Whatever can refuse the input comes before the first write: the resumed state, the features.
    if resume:
        model.load_checkpoint_state(resume.state, resume.path)
        resume.finish()
    features = None if args.finetune else frozen_features(model.backbone, train, test, device, args.checkpoint)
    held_features = None if args.finetune else validation_features(model.backbone, validation, device, args.checkpoint)
    if resume is None:
        files.remove_outputs()  # an earlier run's (--overwrite) or a dead one's: checked above
    record_config(
        files.config,
        args,
        seed,
        device,
        stage=stage,
        stem=stem,
        training_images=len(train),
        validation_images=len(validation) if validation is not None else 0,
        **source,
    )
    # What the stage-2 file says of its run, beside the trained weights.
    run_record = {
        "kind": stage,
        "method": method_name,
        "backbone_name": args.backbone,
        **stem_entry(stem),
        **inputs_entry(normalised),
        "dataset": args.dataset,
        "seed": seed,
        "args": args.record(),
        **source,
        **({VALIDATION_KEY: held_out} if held_out is not None else {}),
    }

    if args.finetune:
        plan = TrainingPlan(
            epochs=args.epochs,
            batch_size=args.data_size,
            seed=seed,
            log_path=files.log,
            checkpoint_paths=lambda e: [files.final] if e == args.epochs else [],
            rolling_checkpoint=files.last_checkpoint,
            extra_state=run_record,
            monitor=finetuning_monitor(model.classifier, validation, device) if validation is not None else None,
            monitor_every=1,
            monitor_columns=("val_accuracy", "val_loss") if validation is not None else (),
            monitor_note="validation split" if validation is not None else "",
        )
        if resume:
            say(f"[INFO] Resuming {resume.path} {resume_position(resume.state)}")
        start_epoch, resume_state = (resume.state["epoch"], resume.state) if resume else (0, None)
        Engine(model, train, plan, device).fit(start_epoch, resume_state)
    else:
        if args.classifier == "logistic":
            described, rows = logistic_regression(model, features, args, held_features)
        else:
            described, rows = linear_evaluation(model, features, args, seed, held_features)
        # The log first, then the checkpoint, whose presence marks the run done: a run stopped
        # before leaves no partial log, and one killed in between a log the next run replaces.
        write_csv(files.log, list(rows[0]), rows)
        save_checkpoint({**model.checkpoint_state(), **run_record, **described}, files.final)
    say(f"[INFO] Saving in: {files.final}")
    result = evaluate(model.backbone, model.classifier, test, device)
    say(f"Test accuracy: {result['accuracy']:.2f}%")
