"""Sources of batches for the trainers: every EM pass is a sum of statistics over the batches of a source.

In memory the whole data set is one batch by default, so a pass is one call;
out of core a source reads its batches from files (:class:`ParquetSource`,
:class:`CSVSource`), and on many machines each rank reads its own shard
(:meth:`shard`).  The EM algorithm is the same.  The protocol a source follows
is in :mod:`moekit.data.batch`.
"""

from .arrays import ArrayBatches, sample_indices
from .batch import Batch
from .files import CSVSource, ParquetSource

__all__ = ["ArrayBatches", "Batch", "CSVSource", "ParquetSource", "sample_indices"]
