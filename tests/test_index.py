"""One ranking rule on every path: exact scores rounded to 6 decimals, equal scores by ProductId.

The same query must give the same list whether it is answered from a precomputed row, a
matrix-vector product, FAISS candidates or rank_all, and with one or two BLAS threads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from engine_support import hand_built_index, random_colour_descriptors, random_unit_vectors

from fashion_lens.ann import attach_faiss_index
from fashion_lens.evaluation import rank_all
from fashion_lens.index import product_query
from fashion_lens.search import similar_products, similar_to_query

PROJECT = Path(__file__).resolve().parents[1]
WEIGHTS = (0.0, 0.4, 1.0)


def _every_path(index):
    """The same index answered four ways."""
    return {"precomputed rows": index,
            "matrix-vector": dataclasses.replace(index, pair_scores=None),
            "exact FAISS": attach_faiss_index(dataclasses.replace(index, faiss_index=None, feature_cache_dir=None), "Flat")}


def _lists(index, k=8):
    return {weight: [similar_products(index, pid, k=k, colour_weight=weight)["ProductId"].tolist()
                     for pid in index.catalog["ProductId"]] for weight in WEIGHTS}


@pytest.fixture(scope="module")
def tied():
    """A catalogue with ties made on purpose: products 1005-1008 carry the very same descriptors
    and colours under ids out of order, and product 1000 looks almost like them."""
    rng = np.random.default_rng(4)
    vectors = random_unit_vectors(rng, 40, 64)
    colours = random_colour_descriptors(rng, 40)
    vectors[[5, 6, 7, 8]] = vectors[5]
    colours[[0, 5, 6, 7, 8]] = colours[5]
    vectors[0] = vectors[5] + 0.05 * vectors[1]
    vectors[0] /= np.linalg.norm(vectors[0])
    ids = [str(1000 + row) for row in range(40)]
    ids[5], ids[6], ids[7], ids[8] = "300", "20", "1000000", "4"  # ProductId order: 4, 20, 300, 1000000
    return hand_built_index(vectors=vectors, colours=colours, ids=ids)


@pytest.mark.fast
def test_equal_scores_come_in_productid_order_on_every_path(tied):
    for name, index in _every_path(tied).items():
        for weight in WEIGHTS:
            results = similar_products(index, "1000", k=4, colour_weight=weight)
            assert results["ProductId"].tolist() == ["4", "20", "300", "1000000"], (name, weight)
            assert results["similarity"].nunique() == 1, (name, weight)


@pytest.mark.fast
def test_every_path_and_rank_all_give_the_same_lists(tied):
    paths = {name: _lists(index) for name, index in _every_path(tied).items()}
    first = paths.pop("precomputed rows")
    for name, lists in paths.items():
        assert lists == first, name
    ids = tied.catalog["ProductId"].to_numpy()
    for weight in WEIGHTS:
        ranks = rank_all(tied, k=8, colour_weight=weight)
        assert [ids[row[row >= 0]].tolist() for row in ranks] == first[weight], weight


@pytest.mark.fast
def test_a_photo_query_ranks_like_the_product_query_it_describes(tied):
    """A described photo (no precomputed row) against the product's own row: the same list, apart
    from the product itself and its copies, which a photo query does not leave out."""
    for position in range(0, len(tied), 7):
        query = dataclasses.replace(product_query(tied, position), position=None)
        product_id = tied.catalog.at[position, "ProductId"]
        for weight in WEIGHTS:
            as_product = similar_products(tied, product_id, k=6, colour_weight=weight)["ProductId"].tolist()
            as_photo = similar_to_query(tied, query, k=8, colour_weight=weight)["ProductId"].tolist()
            assert [pid for pid in as_photo if pid != product_id][:6] == as_product, (product_id, weight)


_THREADS_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    from engine_support import hand_built_index
    from fashion_lens.evaluation import rank_all
    index = hand_built_index(count=1500, dimensions=256, seed=9, genders=("Men", "Women"))
    print(json.dumps({str(weight): rank_all(index, k=10, colour_weight=weight).tolist() for weight in (0.0, 0.4, 1.0)}))
""")


def _ranks_with_threads(script: str, threads: int, env: dict | None = None) -> dict:
    variables = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                 "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=variables, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.fast
def test_one_or_two_blas_threads_give_the_same_lists():
    one, two = (_ranks_with_threads(_THREADS_SCRIPT, threads) for threads in (1, 2))
    assert one == two
    index = hand_built_index(count=1500, dimensions=256, seed=9, genders=("Men", "Women"))
    assert one["0.4"] == rank_all(index, k=10, colour_weight=0.4).tolist()  # and this process agrees


def test_the_real_catalogue_ranks_the_same_with_one_or_two_blas_threads(index):
    """The whole catalogue, read back from the tests' feature cache in fresh processes."""
    script = textwrap.dedent("""
        import json
        from fashion_lens.evaluation import rank_all
        from fashion_lens.index import load_index
        index = load_index(progress=False)
        print(json.dumps({str(weight): rank_all(index, k=10, colour_weight=weight).tolist() for weight in (0.0, 0.4, 1.0)}))
    """)
    one, two = (_ranks_with_threads(script, threads) for threads in (1, 2))
    assert one == two
    assert one["1.0"] == rank_all(index, k=10, colour_weight=1.0).tolist()
