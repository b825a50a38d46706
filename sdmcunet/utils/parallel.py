"""One way to run a function over many cases: worker processes, a progress bar, no surprises."""

from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType
from typing import Callable, Iterable, Iterator, TypeVar

from sdmcunet.utils.progress import progress_bar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _single_threaded_torch() -> None:
    """Workers are forked. A child of a process whose torch already ran OpenMP threads (building a
    network on the CPU is enough) deadlocks at its first parallel region, e.g. in an image resize;
    with one intra-op thread it never enters one, and N workers do not oversubscribe the CPUs."""
    import torch

    torch.set_num_threads(1)


def worker_pool(processes: int) -> PoolType:
    """A pool of `processes` forked workers that are safe to run torch in."""
    return Pool(processes, initializer=_single_threaded_torch)


def parallel_map(function: Callable[[Item], Result], items: Iterable[Item], num_processes: int, description: str,
                 unit: str = "case", ordered: bool = True) -> Iterator[Result]:
    """Yield `function(item)` for every item, in `num_processes` worker processes when more than one.

    With `ordered=False` results come as they finish (for work that records its own results).
    `function` must be picklable (a module-level function or a functools.partial of one).
    """
    items = list(items)
    with progress_bar(total=len(items), desc=description, unit=unit) as progress:
        if num_processes > 1 and len(items) > 1:
            processes = min(num_processes, len(items))
            chunk_size = max(1, min(8, len(items) // (4 * processes)))
            with worker_pool(processes) as pool:
                mapper = pool.imap if ordered else pool.imap_unordered
                for result in mapper(function, items, chunksize=chunk_size):
                    progress.update()
                    yield result
        else:
            for item in items:
                result = function(item)
                progress.update()
                yield result
