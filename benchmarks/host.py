"""Is the machine quiet enough to time on? And what machine is it?

On a shared 2-vCPU VM, another process taking a vCPU stalls every multi-threaded GEMM at its
barrier: measured here, the NumPy MLP step with two OpenBLAS threads fell from ~68k to 1.5k-6k
samples/s during such episodes, while with one thread it only halved. ``HostMonitor`` therefore
measures, for each timed interval, the CPU time used by *other* processes (``/proc/stat`` busy
time minus this process's and its children's CPU time) and calls the interval *quiet* when that
stayed under ``QUIET_OTHERS`` of the machine.

Contention from outside the VM does not show in ``/proc/stat`` (no steal time is reported here):
a single-threaded gauge (64x64 float32 matmuls per ms for 20 ms, too small for OpenBLAS to use
threads) is recorded before and after each interval for diagnosis. It wandered between 62 and 116
on an otherwise idle VM, so it decides quietness only where ``/proc/stat`` is missing.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

QUIET_OTHERS = 0.10  # other processes used at most this fraction of all CPUs
QUIET_GAUGE = 0.8  # without /proc/stat: both gauge readings at least this fraction of the best


class HostMonitor:
    def __init__(self):
        self.a = np.ones((64, 64), np.float32)
        self.best = 0.0
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._ncpu = os.cpu_count() or 1

    def gauge(self, seconds: float = 0.02) -> float:
        """Single-threaded 64x64 matmuls per ms right now (updates the best reading)."""
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            np.dot(self.a, self.a)
            n += 1
        speed = n / (elapsed * 1e3)
        self.best = max(self.best, speed)
        return speed

    def begin(self) -> tuple:
        return (self.gauge(), self._busy_s(), _own_cpu_s(), time.perf_counter())

    def end(self, token: tuple) -> dict:
        """Readings for the interval since ``begin``: gauge pair and others' CPU fraction."""
        g0, busy0, own0, t0 = token
        busy1, own1, t1 = self._busy_s(), _own_cpu_s(), time.perf_counter()
        others = None
        if busy0 is not None and busy1 is not None:
            others = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * self._ncpu)
        return {"gauge": (g0, self.gauge()), "others_cpu": others}

    def quiet(self, reading: dict) -> bool:
        others = reading.get("others_cpu")
        if others is None:
            return min(reading["gauge"]) >= QUIET_GAUGE * self.best
        return others <= QUIET_OTHERS

    def wait_quiet(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a quiet half second; True if one came."""
        deadline = time.perf_counter() + timeout
        while True:
            token = self.begin()
            time.sleep(0.5)
            if self.quiet(self.end(token)):
                return True
            if time.perf_counter() >= deadline:
                return False

    def _busy_s(self) -> float | None:
        """Busy CPU seconds of the whole machine since boot (None if not on Linux)."""
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / self._hz


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def host_load() -> dict:
    """Load average and CPU pressure (% of time some task waited for a CPU, last 10 s)."""
    out = {"loadavg_1min": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        out["cpu_pressure_pct"] = float(some[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def warn_if_busy(when: str) -> dict:
    load = host_load()
    if load.get("cpu_pressure_pct", 0) > 10 or load["loadavg_1min"] > 1.5:
        print(f"[noise] host busy {when}: {load} -- other processes compete for the CPUs")
    return load


def environment() -> dict:
    """CPU, versions, BLAS thread pools and the env vars that steer them."""
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
