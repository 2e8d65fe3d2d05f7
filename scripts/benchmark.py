"""Benchmark Mini-Vision-V2 on this machine: training and inference speed side by side, in one run, one machine.

    python -m scripts.benchmark                      # full -> records/benchmark.json, records/benchmark.md
    python -m scripts.benchmark --quick --output /tmp/bench.json --markdown /tmp/bench.md     # about a minute

Every number is wall-clock on this machine: run it on a quiet one (no training job beside it). The record names the
CPU's ISA features (avx2, avx512f, avx512_vnni, avx512_bf16, amx_*) next to every table, and says what it skipped or
capped because this CPU emulates it (bf16 without AVX-512 BF16 / AMX: --quick skips it, the full run caps it).
The measurements are functions of `minivision_hf.benchmarking`:

(a) Training images/s in steady state through `python -m scripts.train` (each run in its own process; the median
    optimizer step after 5 warm-up steps): plain path (per-sample PIL transforms, fp32, NCHW) against the fast path
    (train.py's defaults: batched augmentation, bf16 where the CPU does bf16, channels_last, fused C kernels),
    alternating for --train-rounds rounds; `train_speedup` = fast / plain of the medians. Then the second conv block
    alone, both ways (what bounds a fast step).
(b) Seconds of training to --target-accuracy (99%) test accuracy, plain and fast, same machine
    (`scripts.train --target-accuracy`), alternating for --target-rounds rounds; `time_to_accuracy_speedup` = plain /
    fast of the medians. Full run only.
(c) Inference images/s at batch 1 and 1024 and test accuracy: eager fp32, eager bf16 + channels_last, ONNX Runtime
    fp32 (onnx/model.onnx) and int8 (onnx/model_quantized.onnx). `inference_speedup` = the best batch-1024 rate
    among variants within 0.1 points of eager fp32's accuracy, over eager fp32's; and whether int8 keeps accuracy
    and pays against ORT fp32 on this CPU (if not, the report says to use model.onnx).
(d) `pipeline("image-classification")` latency per image: MNIST digits and a 400x400 RGBA drawing.
(e) FLOPs per image from the layer shapes against measured matmul peaks (fp32, bf16, int8).

Targets (reported, not asserted): train_speedup >= 5; inference_speedup >= 4; time_to_accuracy_speedup >= 10.
ONNX files come from --onnx-dir when they were exported from these weights (their metadata's weights_sha256), else
the script exports them into a temporary folder with scripts/export_onnx.py.
"""

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import onnxruntime
from transformers import AutoModelForImageClassification

import minivision_hf as mv
import onnx
from minivision_hf import benchmarking as bench
from minivision_hf import onnx_utils
from minivision_hf.data import decode_to_uint8, load_mnist
from minivision_hf.training import (
    git_commit,
    hardware,
    model_source,
    output_file,
    positive,
    versions,
    write_json,
    write_text,
)
from scripts import export_onnx

TINY_DATASET = bench.REPO_ROOT / "tests" / "fixtures" / "mnist_tiny"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: fewer steps, images, calls, seconds")
    p.add_argument("--output", type=output_file, default="records/benchmark.json",
                   help="JSON record (it holds the markdown too)")  # fmt: skip
    p.add_argument("--markdown", type=output_file, default="records/benchmark.md", help="markdown table")
    p.add_argument("--model", type=model_source, default=".",
                   help='model folder or Hub id (default: ".", the release when run from the repo root)')  # fmt: skip
    p.add_argument("--dataset", default="../shared/data/mnist",
                   help="MNIST folder or Hub id; --quick uses tests/fixtures/mnist_tiny if absent")  # fmt: skip
    p.add_argument("--onnx-dir", default="onnx", help="model.onnx / model_quantized.onnx to reuse if they match")
    steps_help = (f"optimizer steps per training path (60; quick 12); at least {bench.MIN_TRAIN_STEPS}: after "
                  f"{bench.TRAIN_WARMUP_STEPS} warm-up steps, the gaps between the later ones are timed")  # fmt: skip
    p.add_argument("--train-steps", type=positive(int), default=None, help=steps_help)
    p.add_argument("--train-rounds", type=positive(int), default=None,
                   help="plain/fast runs alternated this many times, medians compared (5; quick 1)")  # fmt: skip
    p.add_argument("--train-batch-size", type=positive(int), default=256, help="training batch (the seed recipe's 256)")
    p.add_argument("--target-accuracy", type=float, default=0.99, help="test accuracy for the seconds-to-accuracy runs")
    p.add_argument("--target-max-epochs", type=positive(int), default=10,
                   help="epochs at most in a seconds-to-accuracy run")  # fmt: skip
    p.add_argument("--target-rounds", type=positive(int), default=5,
                   help="plain/fast seconds-to-accuracy runs alternated this many times, medians compared")  # fmt: skip
    p.add_argument("--no-time-to-accuracy", action="store_true", help="skip the seconds-to-accuracy runs")
    p.add_argument("--plain-args", default="--recipe seed",
                   help="train.py arguments of the plain seconds-to-accuracy run (the seed card's recipe)")  # fmt: skip
    # The fast run may use any recipe: what is timed is how soon a model of this architecture reaches the target.
    # `plus` at batch 512 (peak rate 0.15) in a 1.5-epoch one-cycle schedule (0.2 warm-up epochs) is past 99% after
    # its first epoch (99.09-99.20% over seeds 1-5 and 42 with the fp32 kernels; 99.09-99.18% in bf16, seeds 1-3, 42),
    # in half the optimizer steps of batch 256, which ended that epoch at 99.03-99.21%.
    p.add_argument("--fast-args", default="--recipe plus --epochs 1.5 --warmup-epochs 0.2 --batch-size 512 --lr 0.15",
                   help="train.py arguments of the fast seconds-to-accuracy run")  # fmt: skip
    p.add_argument("--eval-samples", type=positive(int), default=None,
                   help="test images for accuracy (10000; quick 1000)")  # fmt: skip
    p.add_argument("--time-s", type=positive(float), default=None,
                   help="timed seconds per inference measurement (2; quick 0.25)")  # fmt: skip
    p.add_argument("--pipeline-calls", type=positive(int), default=None,
                   help="pipeline calls per input kind (50; quick 10)")  # fmt: skip
    p.add_argument("--peak-sizes", type=positive(int), nargs="+", default=None,
                   help="n of the n x n peak matmuls, best kept (1024 2048 4096; quick 1024)")  # fmt: skip
    p.add_argument("--int8-min-agreement", type=export_onnx.fraction, default=0.99,
                   help="export check when this script exports (lower it for untrained models)")  # fmt: skip
    args = p.parse_args(argv)
    if args.train_steps is not None and args.train_steps < bench.MIN_TRAIN_STEPS:
        p.error(
            f"--train-steps {args.train_steps} leaves no timed step: the steady rate is the median gap between "
            f"the steps after {bench.TRAIN_WARMUP_STEPS} warm-up steps, so pass at least {bench.MIN_TRAIN_STEPS}"
        )
    # Defaults only where a flag is absent (None): a value given is kept as given, and argparse refused 0 above.
    quick = args.quick
    defaults = {"train_steps": (12, 60), "train_rounds": (1, 5), "eval_samples": (1000, 10000), "time_s": (0.25, 2.0),
                "pipeline_calls": (10, 50), "peak_sizes": ([1024], [1024, 2048, 4096])}  # fmt: skip
    for name, (quick_value, full_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_value if quick else full_value)
    return args


def onnx_files(args: argparse.Namespace, digest: str, dataset: str) -> tuple[Path, str, object]:
    """--onnx-dir if its files were exported from these weights, else a fresh export into a temporary folder."""
    if bench.onnx_matches(Path(args.onnx_dir), digest):
        return Path(args.onnx_dir), str(args.onnx_dir), None
    tmp = tempfile.TemporaryDirectory()
    print(f"exporting ONNX from {args.model} into a temporary folder")
    export_onnx.main([
        "--model", args.model, "--output", tmp.name, "--calibration-dataset", dataset,
        "--eval-samples", str(args.eval_samples), "--emulate-samples", "256", "--time-s", str(min(args.time_s, 1.0)),
        "--min-agreement", str(args.int8_min_agreement), "--max-accuracy-drop", "1",
    ])  # fmt: skip
    return Path(tmp.name), "exported by this run (temporary folder)", tmp


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    dataset = args.dataset
    if args.quick and not Path(dataset).exists():
        print(f"--quick: {dataset} not found, using {TINY_DATASET}")
        dataset = str(TINY_DATASET)
    cpu = bench.cpu_record()
    plan = bench.emulation_plan(cpu, args.quick)
    print(f"CPU ISA: {cpu['isa']} (bf16 {cpu['bf16']}, int8 {cpu['int8_arithmetic']})", *plan["notes"], sep="\n  ")

    # ---- model, test data, FLOPs, matmul peaks ----
    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    test_ds = load_mnist(dataset, "test", args.eval_samples)
    test_x, test_y = decode_to_uint8(test_ds)
    pixels, labels = mv.to_pixel_values(test_x), test_y.numpy()
    flops = bench.forward_flops(model.config)
    forward_per_image = sum(flops.values())
    peak = bench.matmul_peaks(args.peak_sizes, min(args.time_s, 1.0), plan)
    print(f"matmul peak GFLOP/s: {peak['gflops']}")

    # ---- (a) training speed, plain vs fast; the second conv block alone ----
    # Steps past the end of an epoch would include its evaluation and checkpoint in the step gaps.
    max_train = args.train_steps * args.train_batch_size if args.quick else None
    training = bench.training_speed(dataset, args.train_steps, args.train_rounds, args.train_batch_size, max_train,
                                    forward_per_image, peak["gflops"])  # fmt: skip
    # the second conv alone, in the precision the fast path trains in here (bf16 where native, else fp32)
    floor = bench.conv2_step_ms(model.config, args.train_batch_size, min(args.time_s, 1.0),
                                bf16=not plan["bf16_emulated"])  # fmt: skip
    floor["fast_step_ms"] = round(args.train_batch_size / training["fast"]["steady_images_per_s"] * 1e3, 2)
    floor["step_ms_for_target"] = round(args.train_batch_size / (bench.TARGETS["train_speedup"]
                                        * training["plain"]["steady_images_per_s"]) * 1e3, 2)  # fmt: skip
    training["conv2_floor"] = floor

    # ---- (b) seconds to the target accuracy, plain vs fast ----
    time_to_accuracy = None
    if plan["time_to_accuracy"] and not args.no_time_to_accuracy:
        path_args = {"plain": shlex.split(args.plain_args), "fast": shlex.split(args.fast_args)}
        time_to_accuracy = bench.time_to_accuracy(dataset, args.target_accuracy, args.target_max_epochs,
                                                  args.train_batch_size, path_args=path_args,
                                                  rounds=args.target_rounds)  # fmt: skip

    # ---- (c) inference variants ----
    digest = onnx_utils.weights_digest(model)
    onnx_dir, onnx_source, export_tmp = onnx_files(args, digest, dataset)
    inference = bench.inference_speed(model, onnx_dir, pixels, labels, args.time_s, peak["gflops"],
                                      forward_per_image, plan)  # fmt: skip
    inference["dataset"] = dataset
    int8_method = onnx_utils.get_metadata(onnx_dir / onnx_utils.QUANTIZED_FILE).get("quantization")
    inference["onnx"] = {"source": onnx_source, "file": onnx_utils.QUANTIZED_FILE, "int8_method": int8_method}
    if export_tmp is not None:
        export_tmp.cleanup()

    # ---- (d) pipeline latency ----
    pipeline = bench.pipeline_latency(args.model, test_ds, args.pipeline_calls)

    # ---- summary and record (the CPU's ISA next to every figure) ----
    result = {
        "script": "scripts/benchmark.py",
        "quick": args.quick,
        "args": vars(args),
        "model": str(args.model),
        "weights_sha256": digest,
        "cpu": cpu,
        "plan": plan,
        "summary": bench.summarize(training, inference, time_to_accuracy, cpu),
        **bench.tag_isa({"training": training, "time_to_accuracy": time_to_accuracy, "inference": inference,
                         "pipeline": pipeline, "peak": peak}, cpu["isa"]),  # fmt: skip
        "flops": {
            "forward_per_image_by_layer": flops,
            "forward_per_image": forward_per_image,
            "train_per_image": 3 * forward_per_image,
            "note": "2 x multiply-adds of conv and linear layers; training ~ 3x forward (forward + 2 backward GEMMs)",
        },
        "hardware": {**hardware(), "cores": onnx_utils.cpu_cores(), "cpu_flags": onnx_utils.cpu_features()},
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "git": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["markdown"] = bench.format_markdown(result)
    write_json(Path(args.output), result)
    write_text(Path(args.markdown), result["markdown"])
    print(result["markdown"])
    print(f"wrote {args.output} and {args.markdown} in {result['wall_s']} s")
    return result


if __name__ == "__main__":
    main()
