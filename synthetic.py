"""Synthetic catalogues for the benchmark and the scale tests: any number of products, clustered
like the real descriptors, made on the fly from a real index."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fashion_lens.feature_cache import Features
from fashion_lens.features import l2_normalize
from fashion_lens.index import APPROXIMATE_SEARCH_MIN_PRODUCTS, Index, build_index

SYNTHETIC_NEIGHBOURS = 8


def synthetic_vectors(real: np.ndarray, count: int, seed: int = 0, spread: float = 1.0, noise: float = 0.1,
                      chunk: int = 16_384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A synthetic catalogue clustered like `real` (L2-normalised descriptors), in chunks of
    (base rows, float32 vectors), generated on the fly: nothing is stored.

    Each vector is a real one moved at random within the span of its 8 nearest real neighbours,
    by about one neighbour distance (`spread`), plus `noise` in every direction, then normalised:
    the real catalogue's clusters and local directions, at any size. Uniform random vectors would
    have no neighbourhoods, and say nothing about an index.
    """
    real = np.ascontiguousarray(real, dtype=np.float32)
    neighbours = np.concatenate([
        np.argpartition(-_without_self(real[start:start + 4096] @ real.T, start), SYNTHETIC_NEIGHBOURS,
                        axis=1)[:, :SYNTHETIC_NEIGHBOURS]
        for start in range(0, len(real), 4096)])
    rng = np.random.default_rng(seed)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        bases = rng.integers(len(real), size=size)
        steps = rng.standard_normal((size, SYNTHETIC_NEIGHBOURS)).astype(np.float32)
        steps *= np.float32(spread / np.sqrt(SYNTHETIC_NEIGHBOURS))
        vectors = real[bases] * (1 - steps.sum(axis=1, keepdims=True))
        for j in range(SYNTHETIC_NEIGHBOURS):
            vectors += steps[:, j:j + 1] * real[neighbours[bases, j]]
        vectors += rng.standard_normal(vectors.shape, dtype=np.float32) * np.float32(noise / np.sqrt(real.shape[1]))
        yield bases, l2_normalize(vectors)


def _without_self(similarities: np.ndarray, start: int) -> np.ndarray:
    rows = np.arange(len(similarities))
    similarities[rows, start + rows] = -np.inf
    return similarities


def synthetic_index(index: Index, count: int, seed: int = 0,
                    approximate_from: int = APPROXIMATE_SEARCH_MIN_PRODUCTS) -> Index:
    """An Index of `count` synthetic products made from `index` (see synthetic_vectors); each one
    takes the catalogue row (gender, type, colour...) and the colour descriptor of the real
    product it was made from, under a new ProductId. For scale tests and the benchmark."""
    parts = list(synthetic_vectors(index.vectors, count, seed))
    bases = np.concatenate([part[0] for part in parts])
    vectors = np.concatenate([part[1] for part in parts])
    del parts
    catalog = index.catalog.iloc[bases].reset_index(drop=True)
    catalog["ProductId"] = [str(10_000_000 + row) for row in range(count)]
    catalog["duplicate_group"] = catalog["ProductId"]
    catalog["is_duplicate"] = False
    features = Features(ids=catalog["ProductId"].to_numpy(dtype=str), vectors=vectors,
                        colours=index.colours[bases], recipe=index.recipe)
    return build_index(catalog, features, approximate_from=approximate_from)

