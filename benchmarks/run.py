"""Benchmark graphnn against hand-written NumPy, PyTorch eager and JAX jit trainers.

    python benchmarks/run.py [--workloads neuron,digits,...,digits_cnn,image28] [--quick]
                             [--repeats 3] [--min-time 0.3] [--json out.json]

Per workload: every trainer is built and warmed up (compile / JIT excluded from timing), then the
timed repeats run interleaved (A B C A B C ...) so machine noise hits all trainers alike. A repeat
trains the workload's fixed number of chunks (the same work and training progress for every
trainer), continuing with further chunks only while less than ``--min-time`` seconds have passed
(so a very fast trainer is still timed over a measurable interval); its rate is samples / elapsed
time and the reported number is the median over the repeats during which the host was quiet
(host.py). For graphnn, cold and warm start times are measured in fresh subprocesses (see
graphnn_startup.py). See README.md for the definitions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [p for p in (BENCH_DIR, REPO_DIR) if p not in sys.path]

import numpy as np  # noqa: E402
from host import HostMonitor, environment, warn_if_busy  # noqa: E402
from peer_numpy import NumpyTrainer, evaluate  # noqa: E402
from roofline import measure_machine, roofline_table  # noqa: E402
from trainer_base import SkipWorkload, count_subnormals, flush_probe  # noqa: E402
from workloads import (  # noqa: E402
    STARTUP_WORKLOADS,
    WORKLOADS,
    get_workload,
    init_params,
    make_data,
)

# graphnn_noftz: graphnn with gn.compile(..., flush_denormals=False), like numpy and torch.
TRAINER_ORDER = ["graphnn", "graphnn_noftz", "numba_hand", "numpy", "torch", "jax"]
EVAL_SAMPLES = 2048


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated names")
    p.add_argument(
        "--trainers",
        help=f"comma-separated, from {','.join(TRAINER_ORDER)} (default all; quick: no noftz)",
    )
    p.add_argument("--quick", action="store_true", help="small data and budgets (< 1 minute)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per trainer")
    p.add_argument(
        "--min-time", type=float, help="minimum seconds per repeat (default 0.3, quick 0.05)"
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=15.0,
        help="cut a repeat short after the chunk that passes this many seconds (default 15)",
    )
    p.add_argument(
        "--extra-rounds",
        type=int,
        help="at most this many extra rounds for trainers with fewer quiet repeats than --repeats"
        " (default: --repeats, quick 0)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each repeat, wait up to this many seconds for a quiet host (default 0)",
    )
    p.add_argument("--no-startup", action="store_true", help="skip graphnn cold/warm start")
    p.add_argument(
        "--startup-workloads",
        help="graphnn cold/warm start rows (default: the workloads plus deep1,deep30; quick: the"
        " first workload)",
    )
    p.add_argument(
        "--no-end-to-end", action="store_true", help="skip the end-to-end README example rows"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--backend",
        default="cpu",
        choices=["cpu", "cuda"],
        help="graphnn's back end for the steady-state rows (cuda needs a GPU; start-up is cpu)",
    )
    p.add_argument("--json", help="write all results to this file")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if args.trainers is None:
        args.trainers = [t for t in TRAINER_ORDER if not (args.quick and t == "graphnn_noftz")]
    else:
        args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if args.startup_workloads is not None:
        args.startup_workloads = [w.strip() for w in args.startup_workloads.split(",")]
    elif args.quick:  # --quick measures start-up on the first workload only, to stay short
        args.startup_workloads = args.workloads[:1]
    else:  # graphnn_startup.py times dense models only
        dense = [w for w in args.workloads if not WORKLOADS[w].image]
        args.startup_workloads = [*dense, *STARTUP_WORKLOADS]
    for w in args.startup_workloads:
        if w not in WORKLOADS and w not in STARTUP_WORKLOADS:
            known = ", ".join([*WORKLOADS, *STARTUP_WORKLOADS])
            p.error(f"unknown start-up workload {w!r}; known: {known}")
    for t in args.trainers:
        if t not in TRAINER_ORDER:
            p.error(f"unknown trainer {t!r}; known: {', '.join(TRAINER_ORDER)}")
    if args.extra_rounds is None:
        args.extra_rounds = 0 if args.quick else args.repeats
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
    if name == "numba_hand":
        from peer_numba_hand import NumbaHandTrainer

        return NumbaHandTrainer
    import graphnn as gn

    missing = [a for a in ("input", "param", "Graph", "compile", "SGD") if not hasattr(gn, a)]
    if missing:
        raise ImportError(f"graphnn has no public {', '.join(missing)} yet")
    from peer_graphnn import GraphnnTrainer, has_flush_option

    if name == "graphnn":
        return lambda wl, X, Y, init, seed: GraphnnTrainer(gn, wl, X, Y, seed)
    if not has_flush_option(gn):
        raise ImportError("gn.compile has no flush_denormals option")

    def noftz(wl, X, Y, init, seed):
        trainer = GraphnnTrainer(gn, wl, X, Y, seed, flush=False)
        trainer.name = "graphnn_noftz"
        return trainer

    return noftz


# --- steady-state throughput ------------------------------------------------------------------


IDLE_GAP_S = 0.3  # before every timed repeat, whichever trainer it is


def time_repeat(trainer, n_chunks: int, min_time: float, max_time: float) -> float:
    """Samples per second over ``n_chunks`` chunks, plus more while under ``min_time`` seconds.

    Stops early after the chunk that passes ``max_time``: on a busy host a multi-threaded trainer
    can slow down 100x, and the run should still end.
    """
    gc.collect()
    # Let the previous trainer's worker threads go idle: an OpenBLAS worker spins for 2**28
    # cycles (~0.1 s) after its last call (THREAD_TIMEOUT), OpenMP and Eigen pools for less. A
    # spinning thread of another pool takes a core from whatever runs next.
    time.sleep(IDLE_GAP_S)
    samples, done, t0 = 0, 0, time.perf_counter()
    while True:
        samples += trainer.train_chunk()
        done += 1
        elapsed = time.perf_counter() - t0
        if (done >= n_chunks and elapsed >= min_time) or elapsed >= max_time:
            return samples / elapsed


def bench_workload(wl, factories: dict, skipped: dict, args, host: HostMonitor) -> dict:
    t = time.perf_counter()
    X, Y = make_data(wl, args.seed)
    init = init_params(wl, args.seed)
    print(f"\n== {wl.name}: {wl.description}", flush=True)
    print(f"   data {X.shape} generated in {time.perf_counter() - t:.1f}s", flush=True)
    # the last wl.holdout samples are never trained on: eval reports on them instead
    X_eval, Y_eval = (X[-wl.holdout :], Y[-wl.holdout :]) if wl.holdout else (X, Y)
    if wl.holdout:
        X, Y = X[: -wl.holdout], Y[: -wl.holdout]
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
                "repeats": [],
            }
        except SkipWorkload as e:
            print(f"[skip] {name} on {wl.name}: {e}", flush=True)
            results[name] = {"status": "skipped", "reason": str(e)}
        except Exception as e:
            results[name] = _failure(name, e, "build/warm-up")
    _timed_rounds(wl, trainers, results, args, host)
    for name, trainer in trainers.items():
        results[name].update(_summary(wl, trainer, results[name]["repeats"], host, X_eval, Y_eval))
        r = results[name]
        print(
            f"   {name:13s} {r['samples_per_s']:>12,.0f} samples/s "
            f"({r['quiet_repeats']}/{len(r['repeats'])} repeats quiet)",
            flush=True,
        )
    return results


def _timed_rounds(wl, trainers: dict, results: dict, args, host: HostMonitor) -> None:
    """Interleaved rounds (A B C, A B C, ...); extra rounds for trainers short of quiet repeats."""
    for rnd in range(args.repeats + args.extra_rounds):
        quiet = {n: sum(map(host.quiet, results[n]["repeats"])) for n in trainers}
        todo = [n for n in trainers if rnd < args.repeats or quiet[n] < args.repeats]
        if not todo:
            return
        if rnd == args.repeats:
            print(f"   [noise] host busy; extra rounds for {', '.join(todo)}", flush=True)
        for name in todo:
            if args.wait_quiet and not host.wait_quiet(args.wait_quiet):
                print(f"   [noise] no quiet moment within {args.wait_quiet}s", flush=True)
            token = host.begin()
            try:
                rate = time_repeat(trainers[name], wl.repeat_chunks, args.min_time, args.max_time)
            except Exception as e:
                results[name] = _failure(name, e, "timed run")
                del trainers[name]
                continue
            results[name]["repeats"].append({"rate": rate, **host.end(token)})


def _failure(name: str, e: Exception, stage: str) -> dict:
    msg = f"{type(e).__name__}: {e}".splitlines()[0]
    print(f"[fail] {name} during {stage}: {msg}", flush=True)
    if os.environ.get("BENCH_DEBUG"):
        traceback.print_exc()
    return {"status": "failed", "reason": f"{stage}: {msg}"}


def _summary(wl, trainer, repeats, host, X, Y) -> dict:
    rates = [r["rate"] for r in repeats]
    quiet = [r["rate"] for r in repeats if host.quiet(r)]
    out = {
        "samples_per_s": statistics.median(quiet or rates),
        "quiet_repeats": len(quiet),
        "min": min(rates),
        "max": max(rates),
        "info": trainer.info(),
        "chunks_trained": trainer._chunks_done,
    }
    try:
        params = trainer.params_numpy()
        out["eval"] = evaluate(wl, params, X[:EVAL_SAMPLES], Y[:EVAL_SAMPLES])
        out["subnormals_in_state"] = count_subnormals(trainer.state_arrays())
    except Exception as e:
        out["eval"] = {"error": f"{type(e).__name__}: {e}"}
    return out


# --- graphnn cold / warm start ----------------------------------------------------------------


def bench_startup(wl, args, n_warm: int, host: HostMonitor) -> dict:
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
        cold = _run_startup(cmd, env, host)
        # "all cached" includes the fused epoch the cold start's background child compiles:
        # without this wait the warm starts ran stepwise while the child took a core
        cold["fused_wait_s"] = _wait_for_background_compile(env["GRAPHNN_CACHE_DIR"])
        warm = [_run_startup(cmd, env, host) for _ in range(n_warm)]
        # a model never compiled (deeper, wider, another lr) on the caches the cold run filled
        new = _run_startup([*cmd, "--sibling"], env, host)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"cold": cold, "warm": warm, "new": new}
    ok = [w for w in warm if "total_s" in w]
    use = [w for w in ok if w["quiet"]] or ok
    if use:
        result["warm_total_s"] = statistics.median(w["total_s"] for w in use)
        result["warm_process_s"] = statistics.median(w["process_s"] for w in use)
        result["warm_quiet"] = f"{sum(w['quiet'] for w in ok)}/{len(ok)}"
    return result


def _wait_for_background_compile(cache_dir: str, timeout: float = 900.0) -> float:
    """Seconds waited until no fused-epoch compile runs in ``cache_dir``: its child holds a
    ``.job`` file there until it has finished (codegen/cpu/fused_compile.py)."""
    t = time.perf_counter()
    while any(Path(cache_dir).glob("*.job")) and time.perf_counter() - t < timeout:
        time.sleep(0.2)
    return time.perf_counter() - t


def _run_startup(cmd, env, host: HostMonitor) -> dict:
    from graphnn_startup import RESULT_PREFIX

    token = host.begin()
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    process_s = time.perf_counter() - t
    quiet = host.quiet(host.end(token))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return {
                **json.loads(line[len(RESULT_PREFIX) :]),
                "process_s": process_s,
                "quiet": quiet,
            }
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0]}"}


# --- end to end: the README example against the same training by its peers ------------------


def bench_end_to_end(args, repeats: int, host: HostMonitor) -> dict:
    """Wall time from spawn to exit of the README example (graphnn cold: empty caches; warm:
    the caches the cold run filled), of ``graphnn demo`` (cold), and of each peer's same
    training, ``repeats`` runs each (median), every run in a new process."""
    script = os.path.join(BENCH_DIR, "end_to_end.py")
    rows: dict[str, list] = {}
    peers = [t for t in ("numpy", "torch", "jax") if t in args.trainers]
    for _ in range(repeats):
        if "graphnn" in args.trainers:
            # ignore_cleanup_errors: the background compile of the fused epoch (a process the
            # README example leaves running) may still be writing into the cache directory
            with tempfile.TemporaryDirectory(
                prefix="graphnn_e2e_", ignore_cleanup_errors=True
            ) as tmp:
                env = _fresh_cache_env(tmp)
                for row in ("graphnn cold", "graphnn warm"):  # the warm run reuses the cold's
                    cmd = [sys.executable, script, "readme"]
                    rows.setdefault(row, []).append(_run_e2e(cmd, env, host))
            with tempfile.TemporaryDirectory(
                prefix="graphnn_e2e_demo_", ignore_cleanup_errors=True
            ) as tmp:
                cmd = [sys.executable, "-m", "graphnn.cli", "demo", "--quiet"]
                cmd += ["--out", os.path.join(tmp, "run")]
                rows.setdefault("graphnn demo cold", []).append(
                    _run_e2e(cmd, _fresh_cache_env(tmp), host)
                )
        for peer in peers:
            cmd = [sys.executable, script, peer]
            rows.setdefault(peer, []).append(_run_e2e(cmd, dict(os.environ), host))
    out = {}
    for row, runs in rows.items():
        ok = [r for r in runs if "process_s" in r and "error" not in r]
        use = [r for r in ok if r["quiet"]] or ok
        out[row] = {"runs": runs}
        if use:
            out[row]["process_s"] = statistics.median(r["process_s"] for r in use)
            cpu = [r["cpu_s"] for r in use if "cpu_s" in r]
            out[row]["cpu_s"] = statistics.median(cpu) if cpu else None
            out[row]["accuracy"] = use[-1].get("accuracy")
            out[row]["quiet"] = f"{sum(r['quiet'] for r in ok)}/{len(runs)}"
    return out


def _fresh_cache_env(tmp: str) -> dict:
    env = dict(os.environ)
    env["GRAPHNN_CACHE_DIR"] = os.path.join(tmp, "graphnn_cache")
    env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba_cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_DIR, env.get("PYTHONPATH")]))
    return env


def _run_e2e(cmd, env, host: HostMonitor) -> dict:
    from end_to_end import RESULT_PREFIX

    token = host.begin()
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    result = {"process_s": time.perf_counter() - t, "quiet": host.quiet(host.end(token))}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**result, "error": f"exit {proc.returncode}: {tail[0]}"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result.update(json.loads(line[len(RESULT_PREFIX) :]))
    return result


def end_to_end_table(rows: dict) -> str:
    lines = [
        "| run | process wall s (median) | CPU s | held-out accuracy | host quiet |",
        "|---|---:|---:|---:|---|",
    ]
    for row, r in rows.items():
        if "process_s" not in r:
            lines.append(f"| {row} | {r['runs'][0].get('error', 'failed')} | | | |")
            continue
        cpu = f"{r['cpu_s']:.2f}" if r.get("cpu_s") is not None else ""
        acc = f"{r['accuracy']:.3f}" if r.get("accuracy") is not None else ""
        lines.append(f"| {row} | {r['process_s']:.2f} | {cpu} | {acc} | {r['quiet']} |")
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------------------


def _ftz(r: dict) -> str:
    info = r.get("info", {})
    ftz = info.get("flush_to_zero")
    if isinstance(ftz, bool):
        daz = info.get("denormals_are_zero")
        differs = isinstance(daz, bool) and daz != ftz
        return ("yes" if ftz else "no") + (f" (daz {'yes' if daz else 'no'})" if differs else "")
    return str(ftz) if ftz is not None else ""


def table(results: dict) -> str:
    head = [
        "| workload | trainer | optimizer | samples/s (median) | quiet repeats | min–max "
        "| graphnn/peer | FTZ | subnormals in state | eval loss | eval accuracy |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    rows = []
    for wname, res in results.items():
        g = res.get("graphnn", {})
        for name in TRAINER_ORDER:
            r = res.get(name)
            if r is None:
                continue
            if r["status"] != "ok":
                rows.append(f"| {wname} | {name} | | {r['status']}: {r['reason']} |" + " |" * 7)
                continue
            ratio = "—"  # for graphnn_noftz: graphnn / graphnn_noftz, what flushing buys
            if name != "graphnn":
                ok = g.get("status") == "ok"
                ratio = f"{g['samples_per_s'] / r['samples_per_s']:.2f}" if ok else "n/a"
            ev = r.get("eval", {})
            loss = f"{ev['loss']:.4g}" if "loss" in ev else ev.get("error", "")
            acc = f"{ev['accuracy']:.4f}" if "accuracy" in ev else ""
            if acc and WORKLOADS[wname].holdout:  # a chunk is one epoch of the training rows
                acc += f" held out, {r['chunks_trained']} epochs"
            rows.append(
                f"| {wname} | {name} | {r['info'].get('optimizer', '')} "
                f"| {r['samples_per_s']:,.0f} | {r['quiet_repeats']}/{len(r['repeats'])} "
                f"| {r['min']:,.0f}–{r['max']:,.0f} | {ratio} | {_ftz(r)} "
                f"| {r.get('subnormals_in_state', '')} | {loss} | {acc} |"
            )
    return "\n".join(head + rows)


def startup_table(startup: dict) -> str:
    lines = [
        "| workload | cold start s | cold CPU s | import / graph / compile / first step s "
        "| warm start s | warm process wall s | new model s (CPU s) | host quiet (cold; warm) |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for wname, s in startup.items():
        cold = s.get("cold", {})
        if "error" in cold or "skipped" in s:
            lines.append(f"| {wname} | {cold.get('error') or s.get('skipped')} | | | | | | |")
            continue
        parts = " / ".join(
            f"{cold[k]:.2f}" for k in ("import_s", "graph_s", "compile_s", "first_step_s")
        )
        warm = f"{s['warm_total_s']:.3f}" if "warm_total_s" in s else s["warm"][0].get("error")
        if any(w.get("fused") is False for w in s["warm"]):  # the fused epoch was not cached
            warm += " (stepwise)"
        wproc = f"{s['warm_process_s']:.2f}" if "warm_process_s" in s else ""
        quiet = f"{'yes' if cold['quiet'] else 'no'}; {s.get('warm_quiet', '')}"
        cpu = f"{cold['cpu_s']:.2f}" if "cpu_s" in cold else ""
        new = s.get("new", {})
        new = f"{new['total_s']:.2f} ({new['cpu_s']:.2f})" if "total_s" in new else new.get("error")
        lines.append(
            f"| {wname} | {cold['total_s']:.2f} | {cpu} | {parts} | {warm} | {wproc} | {new} "
            f"| {quiet} |"
        )
    deep = [startup.get(w, {}).get("cold", {}) for w in ("deep1", "deep30")]
    if all("total_s" in c for c in deep):
        ratio = deep[1]["total_s"] / deep[0]["total_s"]
        cpu = deep[1].get("cpu_s", 0) / max(deep[0].get("cpu_s", 0), 1e-9)
        lines.append(f"\ncold start, 30 hidden layers / 1: {ratio:.2f}x wall, {cpu:.2f}x CPU")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import peer_graphnn

    peer_graphnn.BACKEND = args.backend
    t_start = time.perf_counter()
    numpy_flush_before = flush_probe(lambda a, b: a * b)
    factories, skipped = load_factories([t for t in TRAINER_ORDER if t in args.trainers])
    results, startup = {}, {}
    load = {"start": warn_if_busy("at start")}
    host = HostMonitor()
    for _ in range(10):  # calibrate the gauge's reference
        host.gauge()
    for wname in args.workloads:
        wl = get_workload(wname, args.quick)
        results[wname] = bench_workload(wl, factories, skipped, args, host)
    if "graphnn" in factories and not args.no_startup:
        for wname in args.startup_workloads:
            print(f"\n== graphnn cold/warm start: {wname}", flush=True)
            wl = get_workload(wname, args.quick)
            startup[wname] = bench_startup(wl, args, 1 if args.quick else 3, host)
    elif "graphnn" in skipped:
        startup = {w: {"skipped": skipped["graphnn"]} for w in args.startup_workloads}
    end_to_end = {}
    if not args.no_end_to_end:
        print(
            "\n== end to end: the README example and its peers, each in a new process", flush=True
        )
        end_to_end = bench_end_to_end(args, 1 if args.quick else 3, host)
    load["end"] = warn_if_busy("at end")
    numpy_flush_after = flush_probe(lambda a, b: a * b)
    if numpy_flush_after != numpy_flush_before:
        print(f"WARNING: the process's denormal mode changed during the run: {numpy_flush_after}")

    print("\n## Throughput (steady state)\n")
    print(table(results))
    machine = None
    if results:
        machine = measure_machine()
        print("\n## Roofline (products at the GEMM peak + memory passes at the bandwidth)\n")
        print(roofline_table(results, {w: get_workload(w, args.quick) for w in results}, machine))
    if startup:
        print("\n## graphnn start-up\n")
        print(startup_table(startup))
    if end_to_end:
        print("\n## End to end (README example: digits, 20 epochs, new process)\n")
        print(end_to_end_table(end_to_end))
    total = time.perf_counter() - t_start
    print(f"\n(total {total:.1f}s; {args.repeats} interleaved repeats, min {args.min_time}s each)")
    if args.json:
        out = {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "environment": environment(),
            "host_load": load,
            "host_gauge_best": host.best,
            "roofline_machine": asdict(machine) if machine else None,
            "numpy_flush_mode": {"start": numpy_flush_before, "end": numpy_flush_after},
            "workloads": {w: asdict(get_workload(w, args.quick)) for w in args.workloads},
            "results": results,
            "graphnn_startup": startup,
            "end_to_end": end_to_end,
            "total_s": total,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
