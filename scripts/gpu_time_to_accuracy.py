"""Seconds of training to 99.0% and 99.5% test accuracy on a CUDA GPU, next to the anchor: 0.76 s to 99.0%
(train_mnist_fast, one epoch, GTX 1660 Ti).

Each configuration is one `scripts.train` run with `--target-accuracy` (it stops at the first epoch whose test
accuracy reaches the target). The fast path on CUDA keeps the uint8 dataset on the GPU and augments whole batches
there (`data.BatchCollator.to`, in `training.build_trainer`), trains under bf16 autocast where the GPU has bf16,
channels_last, and runs PyTorch's ops for every block (the C kernels are CPU kernels). Every configuration runs once,
in order, and a failing one is recorded with its error rather than stopping the rest: GPU time is scarce, so this is
one prepared run (`bash scripts/gpu_check.sh run` on the GPU machine: the CUDA tests, then this script).

    python -m scripts.gpu_time_to_accuracy --dataset ../shared/data/mnist --budget 420   # within a machine's limit
    python -m scripts.gpu_time_to_accuracy --smoke --allow-cpu --dataset tests/fixtures/mnist_tiny \
        --output /tmp/gpu_tta.json   # CI: the logic

Writes records/gpu_time_to_accuracy.json and its markdown table (--output, --markdown). Seconds are the run
record's training seconds up to and including that epoch (evaluations excluded); `wall_s` includes them.
"""

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import torch

from minivision_hf import benchmarking as bench
from minivision_hf.data import DEFAULT_DATASET
from minivision_hf.training import output_file, positive, write_json, write_text

MIN_CONFIG_S = 20.0  # under this many seconds left of --budget, a configuration is not started
ANCHOR = {"seconds_to_99.0": 0.76, "what": "train_mnist_fast, one epoch, GTX 1660 Ti"}
# name, data path, target, train.py arguments. The 99% configurations are the CPU benchmark's fast one, a larger batch
# (fewer, bigger steps suit a GPU) and torch.compile; the 99.5% one is `plus` in a short one-cycle schedule; the plain
# path (per-sample PIL transforms, fp32, the seed's recipe) is the naive side.
# In order of importance: a run that is cut short by the machine's time limit loses only what comes after.
CONFIGS = [
    ("plus-2ep", "fast", 0.99, ["--recipe", "plus", "--epochs", "2", "--warmup-epochs", "0.2"]),
    ("plus-8ep", "fast", 0.995, ["--recipe", "plus", "--epochs", "8", "--warmup-epochs", "0.5"]),
    ("seed-plain", "plain", 0.99, ["--recipe", "seed", "--epochs", "6"]),
    ("plus-3ep-b512", "fast", 0.99, ["--recipe", "plus", "--epochs", "3", "--warmup-epochs", "0.3",
                                     "--batch-size", "512", "--lr", "0.1"]),  # fmt: skip
    ("plus-2ep-compile", "fast", 0.99, ["--recipe", "plus", "--epochs", "2", "--warmup-epochs", "0.2", "--compile"]),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--only", nargs="+", default=None, choices=[c[0] for c in CONFIGS], help="these configurations")
    p.add_argument("--output", type=output_file, default="records/gpu_time_to_accuracy.json")
    p.add_argument("--markdown", type=output_file, default=None, help="default: --output with .md")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check the script, not to time)")
    p.add_argument("--smoke", action="store_true", help="tiny runs (train.py --smoke): the script's logic, for CI")
    p.add_argument("--timeout", type=positive(float), default=150.0,
                   help="seconds at most per configuration (then: its error)")  # fmt: skip
    p.add_argument("--budget", type=positive(float), default=None,
                   help="seconds at most for all configurations (a machine's time limit): each gets at most what is "
                        "left, and those left when it is spent are recorded as not run")  # fmt: skip
    args = p.parse_args(argv)
    args.markdown = args.markdown or str(Path(args.output).with_suffix(".md"))
    if Path(args.markdown).resolve() == Path(args.output).resolve():  # the table would be written over the JSON
        p.error(f"--markdown {args.markdown} is --output {args.output}: give the table a file of its own")
    return args


def seconds_to(record: dict, target: float) -> dict:
    """The first epoch of a run record whose accuracy (of the weights the run keeps: the EMA's where it keeps the
    EMA) reaches `target`: its number, accuracy and the training seconds up to and including it (None where no
    epoch did)."""
    key = "ema_accuracy" if record.get("kept") == "ema" else "test_accuracy"
    seconds = 0.0
    for epoch in record["epochs"]:
        seconds += epoch["wall_s"]
        if epoch.get(key, -1.0) >= target:
            return {"epoch": epoch["epoch"], "accuracy": epoch[key], "train_s": round(seconds, 3)}
    return {"epoch": None, "accuracy": None, "train_s": None}


def failed(row: dict, stderr: str | bytes | None, lines: int = 30) -> dict:
    """A failed configuration's row, with the last `lines` lines of its run's stderr (the traceback: on a lent GPU
    machine there is no second look), also printed."""
    stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
    row["stderr_tail"] = stderr.strip().splitlines()[-lines:]
    print(f"{row['name']}: failed: {row['error']}", *(f"  {line}" for line in row["stderr_tail"]), sep="\n")
    return row


def run_config(name: str, path: str, target: float, train_args: list[str], dataset: str, smoke: bool,
               timeout_s: float | None = None) -> dict:  # fmt: skip
    """One configuration's run: its seconds to 99.0% (and to 99.5% where its target is that), or its error."""
    extra = ["--target-accuracy", str(target), *train_args, *(["--smoke"] if smoke else [])]
    row = {"name": name, "data_path": path, "target": target, "train_args": train_args}
    try:
        record = bench.train_run(path, dataset, extra, batch_size=256, timeout_s=timeout_s)
    except subprocess.TimeoutExpired as error:
        row["error"] = f"stopped after {timeout_s:g} s (--timeout)"
        return failed(row, error.stderr)
    except Exception as error:  # noqa: BLE001 -- a failing configuration is recorded, the others still run
        stderr = getattr(error, "stderr", "") or traceback.format_exc()
        stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        row["error"] = f"{type(error).__name__}: {stderr.strip().splitlines()[-1] if stderr.strip() else error}"
        return failed(row, stderr)
    row.update(
        bf16=bool(record.get("bf16")),
        batch_size=record["args"]["batch_size"],
        epochs_run=len(record["epochs"]),
        epoch_s=[e["wall_s"] for e in record["epochs"]],
        accuracies=[e.get("test_accuracy") for e in record["epochs"]],
        train_images_per_s=record.get("train_images_per_s"),
        to_99_0=seconds_to(record, 0.99),
        to_99_5=seconds_to(record, 0.995),
        hardware=record.get("hardware"),
    )
    print(f"{name}: to 99.0% {row['to_99_0']['train_s']} s, to 99.5% {row['to_99_5']['train_s']} s "
          f"(epochs {row['accuracies']})")  # fmt: skip
    return row


def markdown(result: dict) -> str:
    lines = [f"### Seconds of training to 99.0% / 99.5% test accuracy on {result['device']} [{result['cpu']['isa']}]",
             "",
             "| configuration | path | train.py arguments | bf16 | to 99.0% | to 99.5% | images/s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(reached: dict) -> str:
        return "not reached" if reached["train_s"] is None else f"{reached['train_s']:.2f} s (epoch {reached['epoch']})"

    for row in result["runs"]:
        args = " ".join(row["train_args"])
        if "error" in row:
            lines.append(f"| {row['name']} | {row['data_path']} | `{args}` | | failed: {row['error']} | | |")
            continue
        lines.append(f"| {row['name']} | {row['data_path']} | `{args}` | {row['bf16']} | {cell(row['to_99_0'])} | "
                     f"{cell(row['to_99_5'])} | {row['train_images_per_s'] or 0:,.0f} |")  # fmt: skip
    lines += ["", f"Anchor: {ANCHOR['seconds_to_99.0']} s to 99.0% ({ANCHOR['what']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA GPU here: these figures are a GPU's (pass --allow-cpu to check the script on a CPU)")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (--allow-cpu: not a GPU figure)"
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only]
    result = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": bench.cpu_record(),  # the host CPU (the plain path's transforms run there)
        "anchor": ANCHOR,
        "smoke": args.smoke,
        "dataset": args.dataset,
        "runs": [],
    }
    markdown_path = Path(args.markdown)
    deadline = time.monotonic() + args.budget if args.budget else None
    for config in configs:  # the record is rewritten after each run: a machine taken back keeps what was done
        timeout = args.timeout if deadline is None else min(args.timeout, deadline - time.monotonic())
        if timeout < MIN_CONFIG_S:
            row = dict(zip(("name", "data_path", "target", "train_args"), config), error=f"not run: --budget "
                       f"{args.budget:g} s spent")  # fmt: skip
            print(f"{row['name']}: {row['error']}")
            result["runs"].append(row)
        else:
            result["runs"].append(run_config(*config, args.dataset, args.smoke, round(timeout, 1)))
        write_json(Path(args.output), result)
        write_text(markdown_path, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
