"""Benchmark graphnn against hand-written NumPy, PyTorch eager and JAX jit trainers.

    python benchmarks/run.py [--workloads neuron,digits,mnist_mlp,wide] [--quick]
                             [--repeats 3] [--min-time 0.3] [--json out.json]

Per workload: every trainer is built and warmed up (compile / JIT excluded from timing), then the
timed repeats run interleaved (A B C A B C ...) so machine noise hits all trainers alike. A repeat
trains the workload's fixed number of chunks (the same work and training progress for every
trainer), continuing with further chunks only while less than ``--min-time`` seconds have passed
(so a very fast trainer is still timed over a measurable interval); its rate is samples / elapsed
time and the reported number is the median over repeats. For graphnn, cold and warm start times
are measured in fresh subprocesses (see graphnn_startup.py). See README.md for the definitions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [p for p in (BENCH_DIR, REPO_DIR) if p not in sys.path]

import numpy as np  # noqa: E402
from peer_numpy import NumpyTrainer, evaluate  # noqa: E402
from trainer_base import count_subnormals, flush_probe  # noqa: E402
from workloads import WORKLOADS, get_workload, init_params, make_data  # noqa: E402

TRAINER_ORDER = ["graphnn", "numpy", "torch", "jax"]
EVAL_SAMPLES = 2048


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated names")
    p.add_argument("--trainers", default=",".join(TRAINER_ORDER), help="comma-separated names")
    p.add_argument("--quick", action="store_true", help="small data and budgets (< 1 minute)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per trainer")
    p.add_argument(
        "--min-time", type=float, help="minimum seconds per repeat (default 0.3, quick 0.05)"
    )
    p.add_argument("--no-startup", action="store_true", help="skip graphnn cold/warm start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all results to this file")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    for t in args.trainers:
        if t not in TRAINER_ORDER:
            p.error(f"unknown trainer {t!r}; known: {', '.join(TRAINER_ORDER)}")
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 0.3
    return args


# --- which trainers can run -------------------------------------------------------------------


def load_factories(wanted: list[str]) -> tuple[dict, dict]:
    """(name -> factory(wl, X, Y, init, seed), name -> reason skipped)."""
    factories, skipped = {}, {}
    for name in wanted:
        try:
            factories[name] = _factory(name)
        except Exception as e:  # an unavailable framework is skipped, not fatal
            skipped[name] = f"{type(e).__name__}: {e}".splitlines()[0]
            print(f"[skip] {name}: {skipped[name]}", flush=True)
    return factories, skipped


def _factory(name: str):
    if name == "numpy":
        return NumpyTrainer
    if name == "torch":
        from peer_torch import TorchTrainer

        return TorchTrainer
    if name == "jax":
        from peer_jax import JaxTrainer

        return JaxTrainer
    import graphnn as gn

    missing = [a for a in ("input", "param", "Graph", "compile", "SGD") if not hasattr(gn, a)]
    if missing:
        raise ImportError(f"graphnn has no public {', '.join(missing)} yet")
    from peer_graphnn import GraphnnTrainer

    return lambda wl, X, Y, init, seed: GraphnnTrainer(gn, wl, X, Y, seed)


# --- steady-state throughput ------------------------------------------------------------------


def time_repeat(trainer, n_chunks: int, min_time: float) -> float:
    """Samples per second over ``n_chunks`` chunks, plus more while under ``min_time`` seconds."""
    gc.collect()
    time.sleep(0.05)  # let the previous trainer's spinning worker threads go idle
    samples, done, t0 = 0, 0, time.perf_counter()
    while True:
        samples += trainer.train_chunk()
        done += 1
        elapsed = time.perf_counter() - t0
        if done >= n_chunks and elapsed >= min_time:
            return samples / elapsed


def machine_speed(seconds: float = 0.02) -> float:
    """Single-threaded 64x64 float32 matmuls per ms right now: a noise gauge for the host."""
    a = np.ones((64, 64), np.float32)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        np.dot(a, a)  # tiny enough that OpenBLAS stays on one thread
        n += 1
    return n / (elapsed * 1e3)


def bench_workload(wl, factories: dict, skipped: dict, args) -> dict:
    t = time.perf_counter()
    X, Y = make_data(wl, args.seed)
    init = init_params(wl, args.seed)
    print(f"\n== {wl.name}: {wl.description}", flush=True)
    print(f"   data {X.shape} generated in {time.perf_counter() - t:.1f}s", flush=True)
    results = {n: {"status": "skipped", "reason": r} for n, r in skipped.items()}
    trainers = {}
    for name, factory in factories.items():
        try:
            t = time.perf_counter()
            trainer = factory(wl, X, Y, init, args.seed)
            build_s = time.perf_counter() - t
            for _ in range(wl.warmup_chunks):
                trainer.train_chunk()
            trainers[name] = trainer
            results[name] = {
                "status": "ok",
                "build_s": build_s,
                "warmup_s": time.perf_counter() - t - build_s,
                "rates": [],
            }
        except Exception as e:
            results[name] = _failure(name, e, "build/warm-up")
    speeds = []
    for _ in range(args.repeats):
        for name, trainer in list(trainers.items()):
            speeds.append(machine_speed())
            try:
                rate = time_repeat(trainer, wl.repeat_chunks, args.min_time)
                results[name]["rates"].append(rate)
            except Exception as e:
                results[name] = _failure(name, e, "timed run")
                del trainers[name]
    for name, trainer in trainers.items():
        results[name].update(_summary(wl, trainer, results[name]["rates"], X, Y))
        print(f"   {name:8s} {results[name]['samples_per_s']:>14,.0f} samples/s", flush=True)
    if speeds:
        results["_machine_speed"] = {"min": min(speeds), "max": max(speeds), "all": speeds}
        if min(speeds) < 0.8 * max(speeds):
            print(
                f"   [noise] host speed varied {min(speeds):.1f}..{max(speeds):.1f}"
                " (64x64 matmuls/ms) during the repeats"
            )
    return results


def _failure(name: str, e: Exception, stage: str) -> dict:
    msg = f"{type(e).__name__}: {e}".splitlines()[0]
    print(f"[fail] {name} during {stage}: {msg}", flush=True)
    if os.environ.get("BENCH_DEBUG"):
        traceback.print_exc()
    return {"status": "failed", "reason": f"{stage}: {msg}"}


def _summary(wl, trainer, rates, X, Y) -> dict:
    out = {
        "samples_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "info": trainer.info(),
    }
    try:
        params = trainer.params_numpy()
        out["eval"] = evaluate(wl, params, X[:EVAL_SAMPLES], Y[:EVAL_SAMPLES])
        out["subnormals_in_state"] = count_subnormals(trainer.state_arrays())
    except Exception as e:
        out["eval"] = {"error": f"{type(e).__name__}: {e}"}
    return out


# --- graphnn cold / warm start ----------------------------------------------------------------


def bench_startup(wl, args, n_warm: int) -> dict:
    """Cold start in a fresh cache dir, then ``n_warm`` warm starts reusing it, in subprocesses."""
    X, Y = make_data(wl, args.seed)
    tmp = tempfile.mkdtemp(prefix=f"graphnn_bench_{wl.name}_")
    try:
        batch = os.path.join(tmp, "batch.npz")
        np.savez(batch, x=X[: wl.batch_size], y=Y[: wl.batch_size])
        env = dict(os.environ)
        env["GRAPHNN_CACHE_DIR"] = os.path.join(tmp, "graphnn_cache")
        env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba_cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_DIR, env.get("PYTHONPATH")]))
        cmd = [sys.executable, os.path.join(BENCH_DIR, "graphnn_startup.py"), wl.name, batch]
        cmd += ["--quick"] if args.quick else []
        cold = _run_startup(cmd, env)
        warm = [_run_startup(cmd, env) for _ in range(n_warm)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"cold": cold, "warm": warm}
    if warm and all("total_s" in w for w in warm):
        result["warm_total_s"] = statistics.median(w["total_s"] for w in warm)
        result["warm_process_s"] = statistics.median(w["process_s"] for w in warm)
    return result


def _run_startup(cmd, env) -> dict:
    from graphnn_startup import RESULT_PREFIX

    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    process_s = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return {**json.loads(line[len(RESULT_PREFIX) :]), "process_s": process_s}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0]}"}


# --- report -----------------------------------------------------------------------------------


def environment() -> dict:
    from threadpoolctl import threadpool_info

    env_vars = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in env_vars},
        "threadpools": [
            {k: i.get(k) for k in ("user_api", "internal_api", "version", "architecture")}
            | {"num_threads": i.get("num_threads")}
            for i in threadpool_info()
        ],
    }


def _fmt_rate(r: dict) -> str:
    return f"{r['samples_per_s']:,.0f}" if r.get("status") == "ok" else r.get("status", "?")


def _ftz(r: dict) -> str:
    info = r.get("info", {})
    ftz = info.get("flush_to_zero")
    if isinstance(ftz, bool):
        daz = info.get("denormals_are_zero")
        return ("yes" if ftz else "no") + ("" if daz == ftz else f" (daz {daz})")
    return str(ftz) if ftz is not None else ""


def table(results: dict) -> str:
    head = [
        "| workload | trainer | optimizer | samples/s (median) | min–max | graphnn/peer "
        "| FTZ | subnormals in state | eval loss |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    rows = []
    for wname, res in results.items():
        g = res.get("graphnn", {})
        for name in TRAINER_ORDER:
            r = res.get(name)
            if r is None:
                continue
            if r["status"] != "ok":
                rows.append(f"| {wname} | {name} | | {r['status']}: {r['reason']} | | | | | |")
                continue
            ratio = "—"
            if name != "graphnn":
                ok = g.get("status") == "ok"
                ratio = f"{g['samples_per_s'] / r['samples_per_s']:.2f}" if ok else "n/a"
            ev = r.get("eval", {})
            loss = f"{ev['loss']:.4g}" if "loss" in ev else ev.get("error", "")
            rows.append(
                f"| {wname} | {name} | {r['info'].get('optimizer', '')} | {_fmt_rate(r)} "
                f"| {r['min']:,.0f}–{r['max']:,.0f} | {ratio} | {_ftz(r)} "
                f"| {r.get('subnormals_in_state', '')} | {loss} |"
            )
    return "\n".join(head + rows)


def startup_table(startup: dict) -> str:
    lines = [
        "| workload | cold start s | (import / graph / compile / first step) | warm start s "
        "| warm process wall s |",
        "|---|---:|---|---:|---:|",
    ]
    for wname, s in startup.items():
        cold = s.get("cold", {})
        if "error" in cold or "skipped" in s:
            lines.append(f"| {wname} | {cold.get('error') or s.get('skipped')} | | | |")
            continue
        parts = " / ".join(f"{cold[k]:.2f}" for k in ("import_s", "graph_s", "compile_s"))
        parts += f" / {cold['first_step_s']:.2f}"
        warm = f"{s['warm_total_s']:.3f}" if "warm_total_s" in s else s["warm"][0].get("error")
        wproc = f"{s['warm_process_s']:.2f}" if "warm_process_s" in s else ""
        lines.append(f"| {wname} | {cold['total_s']:.2f} | {parts} | {warm} | {wproc} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    numpy_flush_before = flush_probe(lambda a, b: a * b)
    factories, skipped = load_factories([t for t in TRAINER_ORDER if t in args.trainers])
    results, startup = {}, {}
    for wname in args.workloads:
        wl = get_workload(wname, args.quick)
        results[wname] = bench_workload(wl, factories, skipped, args)
    if "graphnn" in factories and not args.no_startup:
        # --quick measures start-up on the first workload only, to stay under a minute.
        for wname in args.workloads[:1] if args.quick else args.workloads:
            print(f"\n== graphnn cold/warm start: {wname}", flush=True)
            wl = get_workload(wname, args.quick)
            startup[wname] = bench_startup(wl, args, n_warm=1 if args.quick else 3)
    elif "graphnn" in args.trainers:
        reason = skipped.get("graphnn", "disabled by --no-startup")
        startup = {w: {"skipped": reason} for w in args.workloads}
    numpy_flush_after = flush_probe(lambda a, b: a * b)
    if numpy_flush_after != numpy_flush_before:
        print(f"WARNING: the process's denormal mode changed during the run: {numpy_flush_after}")

    print("\n## Throughput (steady state)\n")
    print(table(results))
    if startup:
        print("\n## graphnn start-up\n")
        print(startup_table(startup))
    total = time.perf_counter() - t_start
    print(f"\n(total {total:.1f}s; {args.repeats} interleaved repeats, min {args.min_time}s each)")
    if args.json:
        out = {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "environment": environment(),
            "numpy_flush_mode": {"start": numpy_flush_before, "end": numpy_flush_after},
            "workloads": {w: asdict(get_workload(w, args.quick)) for w in args.workloads},
            "results": results,
            "graphnn_startup": startup,
            "total_s": total,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
