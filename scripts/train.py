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
fused C kernels (minivision_hf/fast/; the second conv as Winograd F(2x2,3x3); equal to bf16 rounding) and
keeps freed memory in the heap (glibc mallopt); "plain" is the seed's recipe written the obvious way (per-sample PIL
torchvision transforms, fp32). Both use the same augmentation distributions.
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

import minivision_hf as mv
from minivision_hf.data import (
    DEFAULT_DATASET,
    BatchCollator,
    IndexDataset,
    decode_to_uint8,
    load_mnist,
    plain_transform,
)
from minivision_hf.fast import apply_fast_kernels, detect_capabilities
from minivision_hf.metrics import load_accuracy
from minivision_hf.training import (
    RECIPES,
    EpochRecorder,
    MiniVisionTrainer,
    epoch_table,
    git_commit,
    hardware,
    keep_freed_memory,
    versions,
    write_json,
)


def parse_args(argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=sorted(RECIPES), default="seed")
    recipe = RECIPES[pre.parse_known_args(argv)[0].recipe]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipe", choices=sorted(RECIPES), default="seed", help="hyperparameter defaults (seed card or plus)"
    )
    # data
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub id or local folder / parquet (../shared/data/mnist)")
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
                   help="--fast-kernels: the 32->64 conv as Winograd F(2x2,3x3), 2.25x fewer products")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off only on long runs)")
    # run
    p.add_argument("--output-dir", default="outputs/seed")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (tests)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (best and last)")
    p.add_argument("--smoke", action="store_true", help="tiny run: 2 epochs on at most 512/256 samples")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.max_train_samples = min(args.max_train_samples or 512, 512)
        args.max_eval_samples = min(args.max_eval_samples or 256, 256)
    if args.channels_last is None:
        args.channels_last = args.data_path == "fast"
    if args.fast_kernels is None:
        args.fast_kernels = args.data_path == "fast" and args.channels_last
    return args


def bf16_supported() -> bool:
    return detect_capabilities().bf16_native("cuda" if torch.cuda.is_available() else "cpu")


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.batch_size % (world * args.grad_accum):
        sys.exit(
            f"--batch-size {args.batch_size} must be divisible by processes x grad-accum = {world * args.grad_accum}"
        )
    per_device_batch = args.batch_size // (world * args.grad_accum)
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and args.data_path == "fast" and bf16_supported())
    recipe = dataclasses.replace(
        RECIPES[args.recipe],
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(RECIPES[args.recipe]) if hasattr(args, f.name)},
    )
    output_dir = Path(args.output_dir)
    set_seed(args.seed)
    # Fast path: keep freed buffers in the heap, so steps stop re-faulting their activations (~25% of a step here).
    memory_kept = keep_freed_memory() if args.data_path == "fast" else False

    # ---- data ----
    train_ds = load_mnist(args.dataset, args.train_split, args.max_train_samples)
    eval_ds = load_mnist(args.dataset, args.eval_split, args.max_eval_samples)
    if args.data_path == "fast":
        train_x, train_y = decode_to_uint8(train_ds)
        eval_x, eval_y = decode_to_uint8(eval_ds)
        collator = BatchCollator(
            torch.cat([train_x, eval_x]),
            torch.cat([train_y, eval_y]),
            augment_below=len(train_x),
            max_shift=recipe.max_shift,
            max_degrees=recipe.max_degrees,
            scale=(recipe.scale_min, recipe.scale_max),
            channels_last=args.channels_last,
            seed=args.seed + 1000 * rank,  # each process draws its own augmentations
        )
        train_data, eval_data = IndexDataset(len(train_x)), IndexDataset(len(eval_x), start=len(train_x))
    else:
        if (recipe.scale_min, recipe.scale_max) != (1.0, 1.0):
            sys.exit("--data-path plain implements the seed's augmentation only (no --scale-min/--scale-max)")
        train_data = train_ds.with_transform(plain_transform(True, recipe.max_shift, recipe.max_degrees))
        eval_data = eval_ds.with_transform(plain_transform(False))
        collator = None

    # ---- model ----
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast_kernels = None
    if args.fast_kernels:
        # Fused conv/max-pool/ReLU C kernels (the second conv as Winograd) and a cheaper dropout: same parameters and
        # saved files; outputs equal to bf16 rounding.
        device = "cuda" if torch.cuda.is_available() else "cpu"  # where Trainer will put the model
        fast_kernels = apply_fast_kernels(model, winograd=args.winograd, device=device, bf16=use_bf16)
        if not fast_kernels["kernels_built"]:
            print(f"--fast-kernels: {fast_kernels['build_error']}; the blocks use PyTorch's conv, max_pool2d and ReLU")
    processor = mv.MiniVisionImageProcessor()

    # ---- trainer ----
    accuracy = load_accuracy()

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions.argmax(-1)
        return accuracy.compute(predictions=predictions, references=eval_pred.label_ids)

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=1024,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=recipe.lr,  # the optimizer and schedule are the recipe's (MiniVisionTrainer)
        label_smoothing_factor=recipe.label_smoothing,
        max_grad_norm=0.0,  # the seed clips no gradients (Trainer's default would clip at 1.0)
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=recipe.best_model,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        torch_compile=args.compile,
        seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",  # TensorBoard is attached explicitly below, writing into output_dir/tensorboard
        disable_tqdm=args.no_progress,
        save_only_model=False,
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
    )
    recorder = EpochRecorder()
    # The callback reopens its writer for the final evaluation after training; the env var keeps both in one folder.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "tensorboard")
    callbacks = [recorder, TensorBoardCallback()]
    trainer = MiniVisionTrainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        recipe=recipe,
    )

    # ---- train ----
    resume = args.resume and any(output_dir.glob("checkpoint-*"))
    if args.resume and not resume:
        print(f"--resume: no checkpoint in {output_dir}, starting from scratch")
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=True if resume else None)
    wall = time.perf_counter() - start
    final = trainer.evaluate()

    # ---- save ----
    if trainer.is_world_process_zero():
        model = trainer.model.to(memory_format=torch.contiguous_format)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        steps_per_epoch = trainer.steps_per_epoch()
        epochs = epoch_table(trainer.state.log_history, recorder)
        best = max(epochs, key=lambda r: r.get("test_accuracy", -1)) if epochs else {}
        steady_step_s = recorder.steady_step_s()
        record = {
            "recipe": args.recipe,
            "recipe_values": dataclasses.asdict(recipe),
            "args": vars(args),
            "seed": args.seed,
            "processes": world,
            "per_device_batch": per_device_batch,
            "steps_per_epoch": steps_per_epoch,
            "bf16": use_bf16,
            "malloc_keeps_freed_memory": memory_kept,
            "fast_kernels": fast_kernels,
            "dataset": {
                "source": str(args.dataset),
                "train": len(train_data),
                "eval": len(eval_data),
                "eval_split": args.eval_split,
            },  # fmt: skip
            "epochs": epochs,
            "best_epoch": best.get("epoch"),
            "kept": "best" if recipe.best_model else "last",
            "final_eval": {"accuracy": final.get("eval_accuracy"), "loss": final.get("eval_loss")},
            "global_step": trainer.state.global_step,
            "resumed": bool(resume),
            "train_wall_s": round(wall, 2),
            "steady_images_per_s": round(args.batch_size / steady_step_s, 1) if steady_step_s else None,
            "train_images_per_s": round(
                trainer.state.global_step * args.batch_size / max(sum(r.get("wall_s", 0) for r in epochs), 1e-9), 1
            ),
            "train_metrics": train_output.metrics,
            "versions": versions(),
            "git": git_commit(),
            "hardware": hardware(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(output_dir / "run_record.json", record)
        acc = final.get("eval_accuracy")
        print(f"done: {trainer.state.global_step} steps in {wall:.1f} s; kept {record['kept']} model "
              f"(epoch {best.get('epoch')}); {args.eval_split} accuracy {acc:.4f}, loss {final.get('eval_loss'):.4f}"
              f" -> {output_dir}")  # fmt: skip
        return record
    return {}


if __name__ == "__main__":
    main()
