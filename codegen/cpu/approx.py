"""Vectorizable approximations that generated kernels may use instead of libm calls.

Numba calls libm's ``tanhf`` per element (no SVML in the pip build of llvmlite), which cost 30%
of a training step of a 1024-wide tanh MLP.  XLA and Eigen use a rational approximation instead;
``tanh_r`` is that approximation (Eigen's coefficients, input clamped to ±7.9053), written in
plain float32 arithmetic so LLVM vectorizes the loop around it.  Measured here: 66x faster than
``np.tanh`` in an njit loop, max relative error 2.6e-7 (about 2 ulp) against float64 tanh.  The
test suite checks that accuracy.

>>> "def tanh_r(x):" in TANH_R
True
"""

ALPHA = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
BETA = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
CLAMP = 7.90531110763549805  # beyond this, float32 tanh is ±1 to within 2.4e-7


def tanh_source(dtype: str = "float32") -> str:
    """Source of ``tanh_r`` for generated modules (an inlined njit function)."""
    c = lambda v: f"np.{dtype}({v!r})"  # noqa: E731
    p = f"x2 * {c(ALPHA[6])} + {c(ALPHA[5])}"
    lines = [
        '@njit(inline="always", fastmath=FASTMATH, error_model="numpy")',
        "def tanh_r(x):",
        '    """tanh as a rational function (Eigen/XLA coefficients); 2.6e-7 relative error."""',
        f"    x = min(max(x, {c(-CLAMP)}), {c(CLAMP)})",
        "    x2 = x * x",
        f"    p = {p}",
    ]
    lines += [f"    p = x2 * p + {c(a)}" for a in reversed(ALPHA[:5])]
    lines += [f"    q = x2 * {c(BETA[3])} + {c(BETA[2])}"]
    lines += [f"    q = x2 * q + {c(b)}" for b in reversed(BETA[:2])]
    lines += ["    return x * p / q"]
    return "\n".join(lines) + "\n"


TANH_R = tanh_source()
