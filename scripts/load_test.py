"""Load test for the Gradio demo: N concurrent gradio_client clients, each sending M requests; errors and latency.

    .venv/bin/python -m scripts.load_test                        # launch spaces_app/app.py; 8 clients x 25 requests
    .venv/bin/python -m scripts.load_test --quick --output /tmp/load_test.json   # 2 clients x 5 requests (smoke)
    .venv/bin/python -m scripts.load_test --url http://127.0.0.1:7860/    # attach to a running app
    .venv/bin/python -m scripts.load_test --model outputs/quick --output /tmp/load_quick.json  # another model

Requests alternate between the two endpoints: /predict (a Sketchpad value whose composite is the image) and
/predict_image. The images are spaces_app/examples/*.png (MNIST test digits and drawn-style renderings of them: black
ink on white or on a transparent layer, 400-800 px canvases, off-centre, thick strokes); their label is in the file
name, so wrong answers are counted too. Latency is per request as a client sees it: upload + queue + inference +
result. Writes a JSON record (--output; default records/load_test.json, the README's figures) with the resolved
arguments, versions, git commit and the results.
"""

import argparse
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_FILE = REPO_ROOT / "spaces_app" / "app.py"
EXAMPLES_DIR = REPO_ROOT / "spaces_app" / "examples"
APP_LOG = REPO_ROOT / "outputs" / "load_test_app.log"  # the launched app's stdout/stderr (outputs/ is not committed)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="attach to a running app instead of launching spaces_app/app.py")
    parser.add_argument("--model", default=None, help="MINIVISION_MODEL for the launched app (default: app's own)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gradio_client clients (threads)")
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 2 clients x 5 requests")
    parser.add_argument("--output", default="records/load_test.json", help="JSON record to write")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the launched app")
    parser.add_argument("--seed", type=int, default=0, help="seed for the order of images each client sends")
    args = parser.parse_args(argv)
    for flag, value in (("--clients", args.clients), ("--requests", args.requests),
                        ("--startup-timeout", args.startup_timeout)):  # fmt: skip
        if not value > 0:
            parser.error(f"argument {flag}: must be positive, got {value}")
    output = Path(args.output)
    existing = next(q for q in (output, *output.parents) if q.exists())  # refused now, not after the whole run
    if (existing == output) == existing.is_dir():
        parser.error(f"--output {args.output}: {existing} is a {'folder' if existing.is_dir() else 'file'}")
    if args.quick:
        args.clients, args.requests = 2, 5
    return args


def example_images() -> list[tuple[str, str]]:
    """(path, label) for every spaces_app/examples/*.png; the label is in the name (..._label7_...)."""
    images = [(str(p), re.search(r"label(\d)", p.name).group(1)) for p in sorted(EXAMPLES_DIR.glob("*.png"))]
    if not images:
        raise SystemExit(f"no example images in {EXAMPLES_DIR}")
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_app(model: str | None, timeout: float) -> tuple[subprocess.Popen, str]:
    """Start spaces_app/app.py in its own process (as on a Space) and wait until it answers HTTP."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    if model:
        env["MINIVISION_MODEL"] = model
    APP_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(APP_LOG, "w") as log:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen([sys.executable, str(APP_FILE)], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}; see {APP_LOG}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s; see {APP_LOG}")


def run_client(url: str, client_id: int, n_requests: int, images, seed: int, results: list, barrier) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(seed * 1000 + client_id)
    try:
        client = Client(url, verbose=False)
    except Exception as err:  # no app there: each request counts as an error (a thread's traceback wrote 0 of 0)
        barrier.abort()  # the clients that connected stop waiting for this one
        results.extend({"client": client_id, "endpoint": None, "image": None, "label": None, "predicted": None,
                        "latency_s": None, "error": f"could not connect: {type(err).__name__}: {err}"}
                       for _ in range(n_requests))  # fmt: skip
        return
    try:
        barrier.wait()  # all clients connected: start together
    except threading.BrokenBarrierError:  # one could not connect: start anyway
        pass
    for i in range(n_requests):
        path, label = rng.choice(images)
        endpoint = "/predict" if (client_id + i) % 2 == 0 else "/predict_image"
        image = handle_file(path)
        payload = {"background": None, "layers": [], "composite": image} if endpoint == "/predict" else image
        start = time.perf_counter()
        try:
            value = client.predict(payload, api_name=endpoint)
            error = None
        except Exception as err:  # recorded, not raised: the point is to count them
            value, error = None, f"{type(err).__name__}: {err}"
        latency = time.perf_counter() - start
        predicted = value.get("label") if isinstance(value, dict) else None
        results.append({"client": client_id, "endpoint": endpoint, "image": Path(path).name, "label": label,
                        "predicted": predicted, "latency_s": latency, "error": error})  # fmt: skip


def git_commit() -> str | None:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def summarize(results: list[dict], wall_s: float) -> dict:
    """The record's summary of every request's result (`run_client`'s dicts) over `wall_s` seconds."""
    ok = [r for r in results if r["error"] is None]
    errors = [r for r in results if r["error"] is not None]
    wrong = [r for r in ok if r["predicted"] != r["label"]]
    latencies_ms = np.array([r["latency_s"] * 1000 for r in ok])
    return {
        "requests": len(results),
        "errors": len(errors),
        "error_examples": sorted({r["error"] for r in errors})[:5],
        "wrong_predictions": len(wrong),
        "wrong_examples": [(r["image"], r["predicted"]) for r in wrong[:5]],
        "latency_ms": {  # of the answered requests (None if none was: NaN is not JSON)
            "p50": round(float(np.percentile(latencies_ms, 50)), 1),
            "p95": round(float(np.percentile(latencies_ms, 95)), 1),
            "max": round(float(latencies_ms.max()), 1),
            "mean": round(float(latencies_ms.mean()), 1),
        } if ok else None,
        "throughput_rps": round(len(ok) / wall_s, 2),  # answered requests per second: failures are not throughput
        "wall_s": round(wall_s, 2),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import gradio
    import gradio_client

    images = example_images()
    proc = None
    url = args.url
    if url is None:
        print(f"launching {APP_FILE.relative_to(REPO_ROOT)} (model: {args.model or 'as the app resolves it'}) ...")
        proc, url = launch_app(args.model, args.startup_timeout)
    print(f"{args.clients} clients x {args.requests} requests against {url}")
    results: list[dict] = []  # list.append is atomic under the GIL
    barrier = threading.Barrier(args.clients)
    try:
        threads = [
            threading.Thread(target=run_client, args=(url, c, args.requests, images, args.seed, results, barrier))
            for c in range(args.clients)
        ]
        wall_start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - wall_start
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    summary = summarize(results, wall_s)
    record = {
        "script": "scripts/load_test.py",
        "args": vars(args),
        "url": url,
        "launched_app": proc is not None,
        "model": "served by the app at --url"
        if args.url
        else args.model or os.environ.get("MINIVISION_MODEL") or "as spaces_app/app.py resolves it",
        "images": [Path(p).name for p, _ in images],
        "git_commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "gradio": gradio.__version__,
            "gradio_client": gradio_client.__version__,
        },
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")  # then renamed over it: a killed run leaves the old record whole
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, output)
    lat = summary["latency_ms"]
    latency = f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms" if lat else "no answers"
    print(f"{summary['requests']} requests, {summary['errors']} errors, {summary['wrong_predictions']} wrong; "
          f"{latency}; {summary['throughput_rps']} answered req/s -> {output}")  # fmt: skip
    if summary["errors"]:
        print("errors:", *summary["error_examples"], sep="\n  ")
    return record


if __name__ == "__main__":
    record = main()
    sys.exit(1 if record["summary"]["errors"] else 0)
