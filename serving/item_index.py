"""Approximate nearest-neighbour search over a large catalogue's item embeddings (issue #33).

Exact top-k multiplies each query with every item embedding: at 1M items that is 64M
multiply-adds and a 4 MB score row per user, and recommend, retrieval and similar all pay it.
Above ``serving.ann_min_items`` items the export builds a Faiss inverted-file index over the
embeddings instead (:func:`export_index`), stored as ``item_index.faiss`` in the version
directories of those three endpoints, and their stages search it (:class:`ItemIndex`).
docs/serving.md, "Large catalogues", says how the size and the index's parameters were chosen.

The index is ``IndexIVFFlat`` with the inner product: the two-tower's item embeddings are
L2-normalised, so the inner product is the cosine exact search ranks by. k-means splits the
catalogue into about ``4 * sqrt(items)`` lists (Faiss's rule of thumb, 4,000 at 1M items), and
a query scans the ``probes`` lists whose centroids are closest to it. IVF-flat rather than a
graph (HNSW) because it stores nothing but the vectors and their list ids (no graph of 32 to
64 neighbours per item to hold in every stub) and builds in seconds, not minutes, at 1M items;
its scores are the exact inner products of the items it finds.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from models.metrics import top_k
from recflow.config import ServingConfig

ITEM_INDEX = "item_index.faiss"
# Faiss trains k-means on at most this many points per list and warns below 39.
TRAINING_POINTS_PER_LIST = 64


def build_index(vectors: np.ndarray, probes: int) -> faiss.Index:
    """An inner-product IVF-flat index over ``vectors`` [items, dim] that scans ``probes``
    lists per query (stored in the index, so every reader searches alike)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    items, dim = vectors.shape
    lists = max(1, min(round(4 * math.sqrt(items)), items // TRAINING_POINTS_PER_LIST))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    # A fixed seed: the same embeddings give the same lists, so a re-export serves alike.
    index.cp.seed = 0
    index.cp.max_points_per_centroid = TRAINING_POINTS_PER_LIST
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(probes, lists)
    return index


def export_index(vectors: np.ndarray, cfg: ServingConfig, path: Path) -> bool:
    """Write the index of ``vectors`` [items, dim] to ``path`` if the catalogue is large
    enough to be searched through one (``cfg.ann_min_items``); whether it was written."""
    if len(vectors) < cfg.ann_min_items:
        return False
    faiss.write_index(build_index(vectors, cfg.ann_probes), str(path))
    return True


class ItemIndex:
    """Search of an index :func:`export_index` wrote; item ids are catalogue positions."""

    def __init__(self, path: Path):
        # One thread: the stubs of every endpoint share a few cores (as OnnxModel's sessions),
        # and Faiss's OpenMP pool would otherwise take them all for every request.
        faiss.omp_set_num_threads(1)
        self.index = faiss.read_index(str(path))
        # The stages read item vectors back from the index's lists (:meth:`vectors`) instead
        # of holding a second copy, 256 MB at 1M items: a position -> entry map, 8 bytes each.
        self.index.make_direct_map()

    def vectors(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The embeddings [*positions.shape, dim] of catalogue ``positions`` (each >= 0), or of
        every item, as the index stores them: the exported float32 values, unchanged."""
        if positions is None:
            return self.index.reconstruct_n(0, self.index.ntotal)
        flat = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        return self.index.reconstruct_batch(flat).reshape(*np.shape(positions), self.index.d)

    def top_k(
        self, queries: np.ndarray, k: int, exclude: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue positions and scores [queries, min(k, items)] of the best items each
        query's row does not ``exclude`` ((row, position) pairs), best first; padding -1 and
        -inf where the probed lists held fewer eligible items than that.

        Each row is searched for k plus the number of its excluded pairs, so the excluded
        items found can be dropped and k others still remain."""
        rows, items = len(queries), self.index.ntotal
        owners, excluded = exclude
        k = min(k, items)
        wanted = min(items, k + int(np.bincount(owners, minlength=rows).max(initial=0)))
        scores, found = self.index.search(np.ascontiguousarray(queries, np.float32), wanted)
        drop = np.isin(
            np.arange(rows)[:, None] * items + found, owners.astype(np.int64) * items + excluded
        )
        scores[drop | (found < 0)] = -np.inf
        best, best_scores = top_k(scores, k)
        picked = np.take_along_axis(found, np.maximum(best, 0), axis=1)
        return np.where(best >= 0, picked, -1), best_scores
