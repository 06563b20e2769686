"""MPI for data-parallel training: is this process a rank of an MPI job, and the job's plumbing.

``rank()``, ``size()``, ``is_main()`` and ``barrier()`` work in any process: outside an MPI job
they answer 0, 1, True and do nothing, without importing mpi4py.  Whether a launcher started this
process is read from the environment it sets (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ...), so a
plain ``fit`` never pays for ``MPI_Init``.

>>> rank(), size(), is_main()   # not started by mpiexec
(0, 1, True)
>>> barrier()
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings

from graphnn.errors import DataError, DistributedError, GraphnnError

# Environment variables a launcher sets in each rank, with the job's size: MPICH's Hydra, Intel
# MPI and Slurm's PMI-2 (PMI_SIZE), Open MPI, MVAPICH2.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# Set by a launcher that does not say the size before MPI_Init (srun --mpi=pmix, prterun).
RANK_VARIABLES = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALNRANKS")
INSTALL = (
    'pip install "graphnn[mpi]" (mpi4py), with an MPI library: the site MPI on a cluster, '
    "`pip install mpich` on a laptop"
)
MODES = ("auto", "mpi", None)


def launched_size() -> int | None:
    """The job's size as the launcher's environment says it; 0 when a launcher started this
    process but does not say the size; None when no MPI launcher started it.

    Read afresh on every call (every ``fit`` asks), so a variable set since the last call
    counts; :func:`_environment` says why that costs 0.3 us and not 6.
    """
    env, keys, decode = _environment()
    for name in SIZE_VARIABLES:
        value = env.get(keys[name])
        if value is not None and decode(value).isdigit():
            return int(decode(value))
    return 0 if any(keys[name] in env for name in RANK_VARIABLES) else None


def _environment():
    """(the environment as a dict, the launcher variables' names as its keys, value decoder).

    ``os.environ.get`` of a missing name raises and catches a KeyError inside: the seven
    names cost 6 us a call.  CPython's ``os.environ`` keeps its contents in ``_data``, a dict
    of encoded names that every write through ``os.environ`` (``monkeypatch.setenv`` too)
    updates, so a lookup there sees what ``os.environ`` sees; an ``os`` without it is read
    the plain way.
    """
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict) and _ENCODED:
        return raw, _ENCODED, os.environ.decodevalue
    return os.environ, _PLAIN, str


_PLAIN = {name: name for name in (*SIZE_VARIABLES, *RANK_VARIABLES)}
try:
    _ENCODED = {name: os.environ.encodekey(name) for name in _PLAIN}
except AttributeError:  # an os.environ without CPython's internals: read it the plain way
    _ENCODED = {}


def _mpi():
    """mpi4py's MPI module (importing it runs MPI_Init), or an error naming the extra."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"data-parallel training needs mpi4py: {INSTALL} ({exc})") from None
    return MPI


def _world():
    """COMM_WORLD when this process is a rank of an MPI job (or has MPI running), else None."""
    if "mpi4py.MPI" in sys.modules or launched_size() is not None:
        return _mpi().COMM_WORLD
    return None


def rank() -> int:
    """This process's rank in the MPI job; 0 outside one."""
    comm = _world()
    return 0 if comm is None else comm.Get_rank()


def size() -> int:
    """The number of ranks in the MPI job; 1 outside one."""
    comm = _world()
    return 1 if comm is None else comm.Get_size()


def is_main() -> bool:
    """True on rank 0: the one rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for outside an MPI job)."""
    comm = _world()
    if comm is not None:
        comm.Barrier()


def from_main(compute):
    """``compute()`` as rank 0 ran it, on every rank (outside an MPI job: ``compute()``).

    The others wait for rank 0; if it raises, every rank raises its error.  For what only rank 0
    may do, such as reading or preparing the files it alone writes.
    """
    comm = _world()
    if comm is None or comm.Get_size() == 1:
        return compute()
    result, failure = None, None
    if comm.Get_rank() == 0:
        try:
            result = compute()
        except Exception as exc:
            failure = exc
    raise_on_every_rank(comm, failure)
    return comm.bcast(result, root=0)


def communicator(mode):
    """The communicator ``fit(distributed=mode)`` trains over, or None to train alone.

    "auto": MPI when a launcher started more than one rank; "mpi": always (a single process is
    a job of one rank); None: never.
    """
    if mode not in MODES:
        raise DataError(f"distributed must be 'auto', 'mpi' or None, got {mode!r}")
    if mode is None:
        return None
    if mode == "auto" and launched_size() in (None, 1):
        return None
    return _mpi().COMM_WORLD


def on_every_rank(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised on every rank alike: no rank is left waiting, so no abort."""
    exc.graphnn_every_rank = True
    return exc


# A block with neither of the two guards below: what they are outside an MPI job, where every
# exception simply passes (a shared nullcontext: their generators cost 1.8 us of each fit)
ALONE = contextlib.nullcontext()


def abort_on_error(comm):
    """An exception on one rank ends the whole job (``comm.Abort``) instead of leaving the
    others waiting in a collective forever; errors every rank raises alike pass through."""
    return ALONE if comm is None else _abort_on_error(comm)


@contextlib.contextmanager
def _abort_on_error(comm):
    try:
        yield
    except BaseException as exc:
        if comm.Get_size() == 1 or getattr(exc, "graphnn_every_rank", False):
            raise
        where = f"graphnn: rank {comm.Get_rank()} of {comm.Get_size()} failed; aborting the job"
        print(where, file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise


def raise_on_every_rank(comm, failure: BaseException | None) -> None:
    """Collective: if any rank had a ``failure``, every rank raises the lowest such rank's error
    (its graphnn error type and message; other types become DistributedError)."""
    if comm is None:
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else (type(failure), str(failure))
    reports = comm.allgather(mine)
    first = next((r for r, report in enumerate(reports) if report is not None), None)
    if first is None:
        return
    if first == comm.Get_rank():
        raise on_every_rank(failure)
    kind, message = reports[first]
    if issubclass(kind, GraphnnError):
        raise on_every_rank(kind(message))
    raise on_every_rank(DistributedError(f"rank {first} failed: {kind.__name__}: {message}"))


def agreement(comm):
    """Run a block in which no collective happens; if it raises on any rank, every rank raises
    that error (so the ones that got through do not wait for the one that did not)."""
    return ALONE if comm is None else _agreement(comm)


@contextlib.contextmanager
def _agreement(comm):
    failure = None
    try:
        yield
    except Exception as exc:
        failure = exc
    raise_on_every_rank(comm, failure)


def blas_threads(comm) -> int:
    """BLAS threads per rank so that threads x ranks on this node never exceed its cores.

    Ranks a launcher bound to their own cores get one thread per core they were given; ranks
    sharing the node's cores split them.  More ranks than cores: one thread each, and a warning
    (ranks x threads > cores slowed a step 16-60x here).
    """
    MPI = _mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or list(range(os.cpu_count() or 1))
        sets = local.allgather(cores)
        ranks_here = local.Get_size()
        first_here = local.Get_rank() == 0
    finally:
        local.Free()
    if any(s != cores for s in sets):  # bound: each rank has cores of its own
        return max(1, len(cores))
    if ranks_here > len(cores) and first_here:
        warnings.warn(
            f"{ranks_here} ranks share this node's {len(cores)} cores, so they take turns on "
            f"them and every step waits for the slowest: start at most {len(cores)} ranks per "
            f"node (mpiexec -n {len(cores)})",
            RuntimeWarning,
            stacklevel=2,
        )
    return max(1, len(cores) // ranks_here)


@contextlib.contextmanager
def limit_blas_threads(threads: int):
    """Limit the BLAS (OpenBLAS, MKL) and OpenMP thread pools to ``threads`` in the block."""
    import scipy.linalg  # noqa: F401  the BLAS Numba's np.dot calls: loaded, so it is limited
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield
