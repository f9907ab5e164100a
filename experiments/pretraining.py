"""Stage 1, run by train_unsupervised.py: train a backbone with a method of the registry and save its
checkpoints."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Iterator

import torch
from torch import nn

from backbones import check_image_side, refuse_stem_without_choice, resolve_stem
from datasets import ImageSet, image_side, load_dataset, pretraining_split
from engine.checkpoint import check_backbone, read_checkpoint, refuse_other_kind, save_checkpoint
from engine.epoch_progress import resume_position
from engine.locks import RunLock
from engine.loop import Engine
from engine.plan import PROBE_KEY, TrainingPlan
from engine.run_files import RunFiles, run_header
from evaluation.linear import evaluate
from experiments.arguments import RunArguments, freeze
from experiments.cli import apply_gpu_flag, stage1_parser
from experiments.flags import ResumeRules
from experiments.monitoring import (
    TEST_SPLIT_NOTE,
    import_wandb,
    tensorboard_listener,
    training_monitor,
    wandb_listener,
)
from experiments.options import stage1_config
from experiments.stage import (
    ResumePoint,
    finished_as_asked,
    inputs_entry,
    record_config,
    resume_point,
    run_configuration,
    run_seed,
    stage_backbone,
    stem_entry,
)
from experiments.validation import VALIDATION_KEY, online_probe, stage1_validation, untrained_validation
from methods import METHODS
from methods.config import MethodConfig
from utils import distributed
from utils.atomic import save_json
from utils.console import say, silenced
from utils.cpu import cpu_has_native_bf16
from utils.errors import UserError
from utils.runtime import resolve_device
from utils.seeds import seed_everything


def saves_numbered(epoch: int, total: int, save_every: int, keep: str = "fractions") -> bool:
    """Whether a numbered checkpoint is written after `epoch` epochs: after the last, after
    25/50/75% too as in the original code (`keep` "fractions"), after every epoch ("all"), and
    every `save_every` epochs (a test, not a set: --epochs may be huge)."""
    kept = {total} | ({int(total * q) for q in (0.25, 0.5, 0.75)} if keep == "fractions" else set())
    return epoch > 0 and (keep == "all" or epoch in kept or bool(save_every) and epoch % save_every == 0)


def stage1_backbone(args: RunArguments, side: int | None, device) -> tuple[nn.Module, str | None]:
    """The fresh backbone of the run, built with the stem `--stem` gives images of `side` px,
    and that stem."""
    stem = resolve_stem(args.backbone, args.stem, side)
    return stage_backbone(args.backbone, stem, device), stem


def refuse_to_replace(args: RunArguments, files: RunFiles) -> None:
    """A new run may not take the name of a run with saved files unless --overwrite says so
    (a config alone is the trace of a run that died before its first save)."""
    saved = [path for path in files.outputs() if path != files.config]
    if saved and not args.overwrite:
        raise UserError(
            f"{files.directory} already holds run {files.header} ({saved[0].name}): pass "
            "--resume auto to continue it, --id to start a separate run, or --overwrite to replace it"
        )


def replace_outputs(files: RunFiles) -> None:
    """Remove the files of the run this one replaces, just before its first write (the inputs
    are checked by then, so a run refused for a bad input removes nothing)."""
    removed = files.remove_outputs()
    if removed:
        say(f"[INFO] Removed {len(removed)} file(s) of the earlier run {files.header}, which this run replaces")


def main(argv: list[str] | None = None) -> None:
    parser = stage1_parser()
    parsed = parser.parse_args(argv)
    apply_gpu_flag(parsed)
    method_class = METHODS[parsed.method]
    config = stage1_config(method_class, parsed)
    if parsed.data_size < method_class.min_batch_size:
        raise UserError(
            f"--data_size {parsed.data_size}: {parsed.method} needs at least {method_class.min_batch_size} "
            "images per batch"
        )
    refuse_stem_without_choice(parsed.backbone, parsed.stem)  # before the data are read
    if parsed.wandb:
        import_wandb()  # a missing package is said before the data are read
    ranks = distributed.launched_ranks()
    device = distributed.start(ranks, resolve_device(parsed.device))
    try:
        with silenced(not ranks.is_main):  # rank 0 speaks for the run; errors still reach stderr
            # Frozen from here on, with the seed every rank takes from rank 0.
            args = freeze(parsed, seed=distributed.broadcast_object(run_seed(parsed)))
            header = run_header(args.method, args.dataset, args.backbone, args.seed, args.id)
            files = RunFiles(args.checkpoint_dir, args.method, args.dataset, header)
            with RunLock(files.lock) if ranks.is_main else contextlib.nullcontext():
                train(args, files, method_class, config, device, ranks, parser.resume_rules())
    finally:
        distributed.stop()


def train(
    args: RunArguments,
    files: RunFiles,
    method_class,
    config: MethodConfig,
    device,
    ranks: distributed.Ranks,
    rules: ResumeRules,
) -> None:
    """Train the run, step by step; `rules`: how a resumed run may differ from its record."""
    if ranks.is_main:
        files.remove_temporary()
    resume = find_resume(args, files, rules, ranks) if args.resume else None
    if resume and finished_as_asked(resume, args.epochs):
        say(f"[INFO] Nothing left to do: run {files.header} has trained its {args.epochs} epochs")
        return
    seed = args.seed  # resolved in main: rank 0's, or the resumed run's when drawn
    say(f"[INFO] Setting SEED: {seed}")
    seed_everything(seed)
    if not resume:
        refuse_to_replace(args, files)
    if not method_class.trains:
        if ranks.is_main:
            save_untrained(args, files, method_class, config, device)
        return
    start_epoch = resume.state["epoch"] if resume else args.epoch_start if args.checkpoint else 0
    if start_epoch >= args.epochs and not (resume and resume.unfinished):
        raise UserError(
            f"nothing to train: the run starts at epoch {start_epoch} and --epochs is "
            f"{args.epochs}; raise --epochs to train longer"
        )
    data, validation, held_out = training_images(args, method_class, ranks, device)
    backbone, stem = stage1_backbone(args, data.side, device)
    method = method_class(backbone, data.num_classes, config, lr=args.lr).to(device)
    for group in method.view_groups:
        check_image_side(args.backbone, stem, group.side(data.side) or data.side, "views")
    # The probe lives where the checkpoints are written; its saved state is checked before any write.
    probe = online_probe(args, data, validation, backbone.feature_size, device, seed) if ranks.is_main else None
    if probe is not None and resume:
        probe.load_state_dict(resume.state.get(PROBE_KEY), resume.path)
    if not restore(method, args, stem, resume, start_epoch, ranks):
        return
    configuration = run_configuration(
        args,
        seed,
        device,
        stage="train_unsupervised",
        stem=stem,
        training_images=len(data),
        validation_images=len(validation) if validation is not None else 0,
        world_size=ranks.world_size,
        input_normalisation={"mean": list(data.mean), "std": list(data.std)},
    )
    with row_copies(args, files.header, configuration, ranks) as listeners:
        plan = training_plan(args, files, method_class, stem, device, ranks, listeners, validation, held_out)
        engine = Engine(method, data, replace(plan, probe=probe), device)
        if ranks.is_main:
            if not resume:
                replace_outputs(files)
            save_json(configuration, files.config)
        engine.fit(start_epoch, resume.state if resume else None)
    if method_class.scores_test_split and ranks.is_main:
        score_on_test_split(args, method, device)


def find_resume(args: RunArguments, files: RunFiles, rules: ResumeRules, ranks: distributed.Ranks) -> ResumePoint:
    """The checkpoint `--resume` continues, checked to be this method's run made alike."""
    return resume_point(
        args,
        files,
        rules,
        ranks.world_size,
        without_state="use --checkpoint with --epoch_start instead",
        check_kind=lambda state, path: refuse_other_kind(state, path, args.method),
    )


def save_untrained(args: RunArguments, files: RunFiles, method_class, config: MethodConfig, device) -> None:
    """Save the final checkpoint of a method that does not train (its fresh backbone)."""
    held_out = untrained_validation(args, args.seed)  # before any write: it may refuse
    replace_outputs(files)
    backbone, stem = stage1_backbone(args, image_side(args.dataset, args.image_size), device)
    method = method_class(backbone, 0, config, lr=args.lr)
    save_checkpoint(
        {
            **method.checkpoint_state(),
            "method": args.method,
            "backbone_name": args.backbone,
            **stem_entry(stem),
            **inputs_entry(method_class.normalises_inputs),
            "seed": args.seed,
            "args": args.record(),
            **held_out,
        },
        files.final,
    )
    record_config(files.config, args, args.seed, device, stage="train_unsupervised", stem=stem)
    say(f"Saving in: {files.final}")


def training_images(
    args: RunArguments, method_class, ranks: distributed.Ranks, device
) -> tuple[ImageSet, ImageSet | None, torch.Tensor | None]:
    """The training images of the run (labelled where the method needs labels), announced, and
    the validation split held out of them with its positions (None without `--val_images`);
    both normalised with the data set's mean and std, or [0, 1] pixels, as the method's reference."""
    split = pretraining_split(args.dataset, method_class.needs_labels)
    data = load_dataset(args.dataset, split, args.data_root, download=not args.no_download, image_size=args.image_size)
    if method_class.needs_labels and bool((data.labels < 0).any()):
        raise UserError(f"method {args.method} needs labels, but the {args.dataset} training split has none")
    data, validation, held_out = stage1_validation(args, data, split, args.seed)
    data = data.balanced_subset(args.train_subset, args.seed).as_inputs(method_class.normalises_inputs)
    if validation is not None:
        validation = validation.as_inputs(method_class.normalises_inputs)
    say(
        f"[INFO] Training images: {len(data)} ({args.dataset} {data.split}, "
        f"{data.side}x{data.side}, {data.num_classes} classes)"
    )
    if ranks.distributed:
        say(f"[INFO] {ranks.world_size} processes, {args.data_size} images per step each")
    if args.precision == "fp16" and device.type == "cpu":
        say("[WARNING] fp16 runs slowly on the CPU; bf16 is the fast reduced precision there")
    if args.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        say(
            "[WARNING] this CPU has no bfloat16 matrix units (AMX, AVX512-BF16 or Arm BF16): bf16 runs in "
            "generic code, far slower than fp32 (docs/performance.md); use --precision fp32 here"
        )
    return data, validation, held_out


def restore(
    method, args: RunArguments, stem: str | None, resume: ResumePoint | None, start_epoch: int, ranks: distributed.Ranks
) -> bool:
    """Load the state the run continues (`--resume`) or starts from (`--checkpoint`); False
    when a resumed run had trained all its epochs, so nothing is left to train."""
    if resume:
        check_backbone(resume.state, args.backbone, resume.path, stem)
        method.load_checkpoint_state(resume.state, resume.path)
        if ranks.is_main:
            resume.finish()
        if start_epoch >= args.epochs:
            say(f"[INFO] The run had trained its {args.epochs} epochs; its files are complete now")
            return False
        say(f"[INFO] Resuming {resume.path} {resume_position(resume.state)}")
    elif args.checkpoint:
        state = read_checkpoint(args.checkpoint)
        check_backbone(state, args.backbone, args.checkpoint, stem)
        refuse_other_kind(state, args.checkpoint, args.method)
        say(f"Loading checkpoint: {args.checkpoint}")
        method.load_checkpoint_state(state, args.checkpoint)
        say("Loading checkpoint: Done!")
    return True


@contextlib.contextmanager
def row_copies(
    args: RunArguments, run: str, configuration: dict, ranks: distributed.Ranks
) -> Iterator[list[Callable[[dict], None]]]:
    """Where the process that writes the run's files copies each logged row besides the CSV log:
    TensorBoard (`--tensorboard`) and a W&B run given the run's `configuration` (`--wandb`)."""
    with contextlib.ExitStack() as copies:
        listeners = []
        if ranks.is_main and args.tensorboard:
            listeners.append(tensorboard_listener(args.tensorboard, run))
        if ranks.is_main and args.wandb:
            listeners.append(copies.enter_context(wandb_listener(args.wandb, run, configuration)))
        yield listeners


def training_plan(
    args: RunArguments,
    files: RunFiles,
    method_class,
    stem: str | None,
    device,
    ranks: distributed.Ranks,
    listeners: list[Callable[[dict], None]],
    validation: ImageSet | None = None,
    held_out: torch.Tensor | None = None,
) -> TrainingPlan:
    """How the engine trains the run: epochs, batches, files, precision, monitoring (on the
    `validation` split held out at the training split's positions `held_out`, when given);
    `listeners` receive each logged row."""
    watching = ranks.is_main and args.eval_every > 0
    monitor = (
        training_monitor(
            args.dataset,
            args.data_root,
            not args.no_download,
            args.image_size,
            args.eval_images,
            args.seed,
            device,
            method_class.normalises_inputs,
            validation,
            held_out,
        )
        if watching
        else None
    )
    return TrainingPlan(
        epochs=args.epochs,
        batch_size=args.data_size,
        seed=args.seed,
        log_path=files.log,
        checkpoint_paths=lambda e: (
            [files.epoch_checkpoint(e)] if saves_numbered(e, args.epochs, args.save_every, args.keep) else []
        ),
        rolling_checkpoint=files.last_checkpoint,
        extra_state={
            "method": args.method,
            "backbone_name": args.backbone,
            **stem_entry(stem),
            **inputs_entry(method_class.normalises_inputs),
            "dataset": args.dataset,
            "seed": args.seed,
            "args": args.record(),
            "world_size": ranks.world_size,
            **({VALIDATION_KEY: held_out} if held_out is not None else {}),
        },
        drop_last=method_class.drop_last,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        ranks=ranks,
        monitor=monitor.score if monitor else None,
        monitor_every=args.eval_every,
        monitor_columns=monitor.columns if monitor else (),
        monitor_note=monitor.note if monitor else probe_note(args, validation),
        row_listeners=listeners,
    )


def probe_note(args: RunArguments, validation: ImageSet | None) -> str:
    """The monitor line's note when only the online probe scores: the split it scores on."""
    if not args.online_probe:
        return ""
    return "validation split" if validation is not None else TEST_SPLIT_NOTE


def score_on_test_split(args: RunArguments, method, device) -> None:
    """Score the classifier a supervised run trained on the test split."""
    test = load_dataset(args.dataset, "test", args.data_root, download=not args.no_download, image_size=args.image_size)
    result = evaluate(method.backbone, method.classifier, test.as_inputs(method.normalises_inputs), device)
    say(f"Test loss: {result['loss']:.4f}")
    say(f"Test accuracy: {result['accuracy']:.2f}%")
