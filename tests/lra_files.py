"""The tiny official-layout datasets of the tests: the writers live in `lra.data.samples` (the
package's `python -m lra.gpucheck` writes them too); re-exported here under their old names."""

from lra.data.samples import (
    random_images,
    write_aan,
    write_aclimdb,
    write_all_tasks,
    write_cifar_python,
    write_listops,
    write_pathfinder,
)

__all__ = [
    "random_images",
    "write_aan",
    "write_aclimdb",
    "write_all_tasks",
    "write_cifar_python",
    "write_listops",
    "write_pathfinder",
]
