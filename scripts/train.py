"""Train Mini-Vision-V2 with transformers.Trainer on MNIST, with the seed card's recipe by default.

    python -m scripts.train --dataset ../shared/data/mnist --output-dir outputs/seed        # the seed recipe, 40 epochs
    python -m scripts.train --recipe plus --seed 1 --output-dir outputs/plus-1              # the stronger recipe
    python -m scripts.train --smoke --dataset tests/fixtures/mnist_tiny --output-dir /tmp/smoke   # seconds, for CI
    python -m scripts.train ... --resume                     # continue an interrupted run from its last checkpoint
    torchrun --nproc_per_node 2 -m scripts.train ...         # several processes (gloo on CPU); same global batch

Writes to --output-dir: the best (or final) model via save_pretrained (model.safetensors, config.json with auto_map,
code files, preprocessor_config.json), `tensorboard/` event files (train loss, test loss, test accuracy, learning
rate), `checkpoint-*/` and `run_record.json` (resolved arguments, seed, versions, git commit, per-epoch metrics, wall
time, hardware).

Data paths: "fast" (default) decodes MNIST once into a uint8 tensor and augments whole batches with one affine
grid_sample, in bf16 autocast (AVX512-BF16 / AMX CPUs, CUDA) with channels_last, runs the blocks' conv/max-pool/ReLU as
fused C kernels (minivision_hf/fast/; the second conv as Winograd F(2x2,3x3) in bf16, F(4x4,3x3) in fp32) and
keeps freed memory in the heap (glibc mallopt); "plain" is the seed's recipe written the obvious way (per-sample PIL
torchvision transforms, fp32). Both use the same augmentation distributions.
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

from transformers import set_seed

import minivision_hf as mv
from minivision_hf.data import DEFAULT_DATASET
from minivision_hf.training import (
    RECIPES,
    NonFiniteLossError,
    bf16_supported,
    build_data,
    build_model,
    build_trainer,
    check_arguments,
    dataset_source,
    evaluate_kept_model,
    keep_freed_memory,
    kept_epoch,
    last_complete_checkpoint,
    process_counts,
    recipe_from_args,
    recover_folder,
    replaced_folder_problem,
    resume_mismatches,
    run_identity,
    run_record,
    save_final_model,
)


def parse_args(argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=sorted(RECIPES), default="seed")
    recipe = RECIPES[pre.parse_known_args(argv)[0].recipe]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default="seed", help="hyperparameter defaults (seed card, plus or best)"
    )
    # data
    p.add_argument("--dataset", type=dataset_source, default=DEFAULT_DATASET,
                   help="Hub id or local folder / parquet (../shared/data/mnist)")  # fmt: skip
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="test", help="evaluated every epoch; the best epoch is kept by accuracy")
    p.add_argument("--max-train-samples", type=int, default=None, help="cap for quick runs")
    p.add_argument("--max-eval-samples", type=int, default=None, help="cap for quick runs")
    # recipe (defaults from --recipe)
    p.add_argument("--epochs", type=float, default=recipe.epochs)
    p.add_argument("--batch-size", type=int, default=recipe.batch_size, help="global batch (all processes, all accum)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=recipe.lr, help="base learning rate")
    p.add_argument("--momentum", type=float, default=recipe.momentum)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=recipe.nesterov)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=recipe.optimizer,
                   help="adamw: --momentum is its beta1, --weight-decay is decoupled")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=recipe.weight_decay)
    p.add_argument("--scheduler", choices=["step", "onecycle"], default=recipe.scheduler)
    p.add_argument("--step-epochs", type=int, default=recipe.step_epochs, help="StepLR step size in epochs")
    p.add_argument("--gamma", type=float, default=recipe.gamma, help="StepLR decay factor")
    p.add_argument("--warmup-epochs", type=float, default=recipe.warmup_epochs, help="onecycle warm-up (epochs)")
    p.add_argument("--label-smoothing", type=float, default=recipe.label_smoothing)
    p.add_argument("--max-shift", type=int, default=recipe.max_shift, help="RandomCrop padding in pixels")
    p.add_argument("--max-degrees", type=float, default=recipe.max_degrees, help="RandomRotation range in degrees")
    p.add_argument("--scale-min", type=float, default=recipe.scale_min)
    p.add_argument("--scale-max", type=float, default=recipe.scale_max)
    p.add_argument("--shear", type=float, default=recipe.shear, help="random x-shear range in degrees (0 = none)")
    p.add_argument("--elastic-alpha", type=float, default=recipe.elastic_alpha,
                   help="elastic distortion strength in pixels (0 = none)")  # fmt: skip
    p.add_argument("--elastic-sigma", type=float, default=recipe.elastic_sigma, help="elastic smoothing (pixels)")
    p.add_argument("--interpolation", choices=["nearest", "bilinear"], default=recipe.interpolation,
                   help="augmentation resampling (fast path)")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=recipe.ema_decay,
                   help="weight EMA per step (0 = none); the EMA weights are evaluated and kept")  # fmt: skip
    p.add_argument("--sam-rho", type=float, default=recipe.sam_rho,
                   help="sharpness-aware minimisation radius (0 = none; two forward/backward passes per step)")
    p.add_argument("--distill-from", nargs="+", default=None, metavar="MODEL",
                   help="teacher model folders (or Hub ids): their averaged softmax is a second target")  # fmt: skip
    p.add_argument("--distill-weight", type=float, default=recipe.distill_weight,
                   help="weight of the distillation term against the labels' cross-entropy (0 = none)")  # fmt: skip
    p.add_argument("--distill-temperature", type=float, default=recipe.distill_temperature,
                   help="softmax temperature of the distillation term")  # fmt: skip
    p.add_argument("--clean-epochs", type=int, default=recipe.clean_epochs,
                   help="train the last N epochs on the rows without augmentation (fast path; 0 = augment throughout)")
    p.add_argument("--poly-epsilon", type=float, default=recipe.poly_epsilon,
                   help="Poly-1 loss: cross-entropy + epsilon x (1 - the label's probability) (0 = cross-entropy)")
    p.add_argument("--val-size", type=int, default=recipe.val_size,
                   help="hold out this many training rows as the evaluation set (0 = evaluate on --eval-split)")
    p.add_argument("--val-seed", type=int, default=0, help="seed of the held-out rows (data.validation_split)")
    p.add_argument("--best-model", action=argparse.BooleanOptionalAction, default=recipe.best_model,
                   help="keep the epoch with the best test accuracy (else the last)")  # fmt: skip
    p.add_argument("--seed", type=int, default=42)
    # speed
    p.add_argument("--data-path", choices=["fast", "plain"], default="fast", help="batched tensors or per-sample PIL")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast; auto: on with the fast path on AMX/AVX512-bf16 CPUs and CUDA")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on with the fast path")  # fmt: skip
    p.add_argument("--fast-kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="fused conv/max-pool/ReLU C kernels and fast dropout; default: with the fast path")  # fmt: skip
    p.add_argument("--winograd", action=argparse.BooleanOptionalAction, default=True,
                   help="--fast-kernels: the 32->64 conv as Winograd (F(2x2,3x3) in bf16, F(4x4,3x3) in fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off only on long runs)")
    # run
    p.add_argument("--output-dir", default="outputs/seed")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (tests)")
    p.add_argument("--target-accuracy", type=float, default=None,
                   help="stop after the first epoch whose accuracy reaches this (e.g. 0.99); recorded")  # fmt: skip
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (best and last)")
    p.add_argument("--smoke", action="store_true", help="tiny run: 2 epochs on at most 512/256 samples")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    problem = replaced_folder_problem(args.output_dir)  # '.', '', the repo root: the kept model is swapped in whole
    if problem:
        p.error(f"--output-dir {args.output_dir} {problem}")
    # A quoted or `--output-dir=~/x` tilde: Trainer expands it for the checkpoints, the final save would not.
    args.output_dir = str(Path(args.output_dir).expanduser())
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.max_train_samples = 512 if args.max_train_samples is None else min(args.max_train_samples, 512)
        args.max_eval_samples = 256 if args.max_eval_samples is None else min(args.max_eval_samples, 256)
        args.val_size = min(args.val_size, 100)  # a held-out split that fits in the 512 smoke rows
    if args.channels_last is None:
        args.channels_last = args.data_path == "fast"
    if args.fast_kernels is None:
        args.fast_kernels = args.data_path == "fast" and args.channels_last
    world, rank = process_counts()
    if rank == 0:
        recover_folder(Path(args.output_dir))  # finish a final save that a kill interrupted, before looking at it
    problems = check_arguments(args, world=world)
    if problems:  # refused before anything is read or written
        p.error("; ".join(problems))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    world, rank = process_counts()
    output_dir = Path(args.output_dir)
    recipe = recipe_from_args(args)
    try:  # the machine's capabilities, read once (a bad MINIVISION_ISA_LEVEL is a usage error)
        native_bf16 = bf16_supported()
    except ValueError as err:
        scripts.usage_error("train.py", str(err))
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and args.data_path == "fast" and native_bf16)
    if args.bf16 == "on" and not native_bf16:
        print("note: --bf16 on: this machine has no bf16 hardware (CPU: no AVX512-BF16 or AMX; GPU: pre-Ampere), so "
              "PyTorch emulates it, many times slower than fp32 at the same accuracy; --bf16 auto trains in fp32 here",
              file=sys.stderr)  # fmt: skip
    set_seed(args.seed)
    # Fast path: keep freed buffers in the heap, so steps stop re-faulting their activations (~25% of a step here).
    memory_kept = keep_freed_memory() if args.data_path == "fast" else False

    if args.resume:  # continuing with other values would mix two runs in one model and one record
        recorded, differences = resume_mismatches(output_dir, run_identity(args, recipe, world))
        if differences:  # refused before anything is removed
            scripts.usage_error("train.py", f"--resume: {recorded} belongs to a run with other values ("
                                f"{'; '.join(differences)}): resume with its arguments, or use a new --output-dir")
    checkpoint = last_complete_checkpoint(output_dir, world, remove_incomplete=rank == 0) if args.resume else None
    if args.resume and checkpoint is None:
        print(f"--resume: no complete checkpoint in {output_dir}, starting from scratch")
    try:
        data = build_data(args, recipe, rank)
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # the dataset: missing, offline, wrong schema
        scripts.usage_error("train.py", str(err))
    model, fast_kernels = build_model(args, use_bf16)
    processor = mv.MiniVisionImageProcessor()
    trainer = build_trainer(args, recipe, model, processor, data, world, use_bf16)
    if checkpoint is not None:
        done = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        planned = args.max_steps if args.max_steps > 0 else math.ceil(args.epochs * trainer.steps_per_epoch())
        if done > planned:
            scripts.usage_error("train.py", f"--resume: {checkpoint} is at step {done}, past this run's {planned} "
                                "steps (--max-steps): resume without it, or use a new --output-dir")  # fmt: skip
        finished = output_dir / "run_record.json"
        saved = json.loads(finished.read_text()) if finished.exists() else None
        target = (saved or {}).get("target_accuracy") or {}  # stopped early at this --target-accuracy: finished too
        stopped = done == planned or (target.get("reached") and target.get("target") == args.target_accuracy)
        if saved is not None and saved["global_step"] == done and stopped:
            # finished and saved: nothing to train (Trainer would replay a fractional last epoch past its end, and
            # a run stopped at its target logged a second end of training at the same step)
            print(f"--resume: the run in {output_dir} finished at step {done} and is saved; nothing is left to train")
            return saved

    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteLossError as err:
        sys.exit(f"stopped: {err}; {output_dir} keeps what it had")
    final_eval = evaluate_kept_model(trainer)
    if not trainer.is_world_process_zero():
        return {}
    record = run_record(args, recipe, trainer, data, final_eval, world=world, use_bf16=use_bf16,
                        memory_kept=memory_kept, fast_kernels=fast_kernels)  # fmt: skip
    save_final_model(trainer.model, processor, record, output_dir)
    target = record["target_accuracy"]
    reached = f"; reached {target['target']} at epoch {target['epoch']}" if target and target["reached"] else ""
    print(f"done: {record['global_step']} steps in {record['train_wall_s']:.1f} s{reached}; kept {record['kept']} "
          f"model (epoch {kept_epoch(record)['epoch']}); {data.eval_name} accuracy {final_eval['accuracy']:.4f}, loss "
          f"{final_eval['loss']:.4f} -> {output_dir}")  # fmt: skip
    return record


if __name__ == "__main__":
    main()
