"""Where this process stands in an MPI job: ``rank()``, ``size()``, ``is_main()``, ``barrier()``.

Outside an MPI job (no launcher in the environment) they answer 0, 1, True and do nothing,
without importing mpi4py.  Under ``mpiexec -n 4 python train.py``, ``fit`` trains data-parallel
and ``is_main()`` picks the one rank that should print or write files::

    import graphnn as gn
    history = model.fit(data, epochs=10)  # every rank
    if gn.distributed.is_main():
        model.save("model.npz")

>>> rank(), size(), is_main()
(0, 1, True)
"""

from graphnn.train.distributed import barrier, is_main, rank, size

__all__ = ["barrier", "is_main", "rank", "size"]
