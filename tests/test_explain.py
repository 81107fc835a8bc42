"""Similarity maps: where in a result's photo the query's descriptor is found (real photos, real MobileNetV2)."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest

from fashion_lens.display import show_similarity_maps
from fashion_lens.errors import SettingsError
from fashion_lens.explain import (
    cell_similarities,
    feature_maps,
    network_inputs,
    similarity_map,
    similarity_maps,
)
from fashion_lens.features import descriptors_from_maps, grid_quadrants, l2_normalize, pool_feature_maps
from fashion_lens.search import similar_products

# Real products whose labels fashion.csv gives: a Boys' blue check shirt, a men's black casual shoe, a girls' peach top.
PRODUCTS = ["31099", "28316", "35446"]


def product_share(square: np.ndarray) -> np.ndarray:
    """Per 32x32 cell of a network input, the share of its pixels that are not near-white (the product's)."""
    cells = square.shape[0] // 32
    return (square.reshape(cells, 32, cells, 32, 3).min(axis=-1) < 235).mean(axis=(1, 3))


def test_pooling_the_recomputed_maps_gives_back_the_stored_descriptors(index):
    maps = feature_maps(index, PRODUCTS)
    assert maps.shape == (3, 7, 7, 1280) and maps.dtype == np.float32 and np.isfinite(maps).all()
    pooled = descriptors_from_maps(maps, index.recipe).astype(np.float32)
    stored = index.vectors[[index.positions[pid] for pid in PRODUCTS]]
    np.testing.assert_allclose(pooled, stored, atol=2e-3)
    assert np.all(np.einsum("nd,nd->n", pooled, stored) > 0.9999)
    # another product's map does not give this one's descriptor: the check can fail
    assert float(pooled[0] @ stored[1]) < 0.9


def test_a_product_against_itself_peaks_on_the_garment_not_on_the_white_background(index):
    squares = network_inputs(index, PRODUCTS)
    for product_id, square in zip(PRODUCTS, squares):
        cells = similarity_map(index, product_id, product_id)
        assert cells.shape == (7, 7) and np.isfinite(cells).all()
        assert cells.min() >= -1 - 1e-6 and cells.max() <= 1 + 1e-6
        share = product_share(square)
        garment, background = share >= 0.9, share <= 0.02
        assert garment.sum() >= 5 and background.sum() >= 5, f"{product_id}: pick a photo with white around it"
        peak = np.unravel_index(np.argmax(cells), cells.shape)
        assert share[peak] >= 0.5, f"{product_id} peaks at {peak}, a background cell"
        assert cells[garment].mean() > cells[background].mean() + 0.2, product_id
        corners = cells[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.max() < cells.max() - 0.2, product_id


def test_the_cell_maps_add_up_to_the_visual_similarity_the_ranking_uses(index):
    """grid2x2: the visual similarity of two products is the mean, over the quadrants, of the cosine
    between the query's quadrant vector and the mean of the result's cells there."""
    query, results = "31099", similar_products(index, "31099", k=3, colour_weight=0)
    maps = feature_maps(index, results["ProductId"])
    parts = l2_normalize(index.vectors[index.positions[query]].reshape(4, -1).astype(np.float64))
    for cells, visual in zip(maps, results["visual_similarity"]):
        quadrants = [l2_normalize(cells[rows, cols].mean(axis=(0, 1))) for rows, cols in grid_quadrants(7, 7)]
        assert np.mean([part @ quadrant for part, quadrant in zip(parts, quadrants)]) == pytest.approx(visual, abs=2e-3)
    maps_by_id = similarity_maps(index, query, results["ProductId"])
    assert maps_by_id.shape == (3, 7, 7)
    np.testing.assert_allclose(maps_by_id[1], similarity_map(index, query, results["ProductId"].iloc[1]), atol=1e-4)


def test_show_similarity_maps_draws_the_query_then_its_top_results_under_their_maps(index):
    matplotlib.use("Agg")
    figure = show_similarity_maps(index, "28316", k=3)
    panels = [axis for axis in figure.axes if len(axis.images) == 2]  # photo + map (the colour bar has none)
    assert len(panels) == 4
    expected = similar_products(index, "28316", k=3)["ProductId"].tolist()
    assert [axis.get_title().split("\n")[1].split(" ")[0] for axis in panels] == ["28316", *expected]
    maps = similarity_maps(index, "28316", ["28316", *expected])
    for axis, cells in zip(panels, maps):
        np.testing.assert_allclose(np.asarray(axis.images[1].get_array()), cells, atol=1e-4)
        assert axis.images[0].get_array().shape == (224, 224, 3)  # the square the network sees


# ---- fast: the arithmetic, and the refusals ------------------------------------------------------

@pytest.mark.fast
def test_fast_grid_quadrants_are_the_cells_grid2x2_pooling_averages():
    maps = np.random.default_rng(0).random((2, 7, 7, 8)).astype(np.float32)
    quadrants = [l2_normalize(maps[:, rows, cols].mean(axis=(1, 2))) for rows, cols in grid_quadrants(7, 7)]
    np.testing.assert_allclose(l2_normalize(np.concatenate(quadrants, axis=1)), pool_feature_maps(maps, "grid2x2"),
                               rtol=1e-5)
    assert grid_quadrants(7, 7)[0] == (slice(0, 4), slice(0, 4)) and grid_quadrants(7, 7)[3] == (slice(3, 7), slice(3, 7))


@pytest.mark.fast
@pytest.mark.parametrize("pooling", ["gap", "grid2x2"])
def test_fast_a_cell_unlike_the_descriptor_scores_zero_and_the_others_one(pooling):
    rng = np.random.default_rng(1)
    feature = np.abs(rng.standard_normal(8)).astype(np.float32)
    maps = np.tile(feature, (1, 7, 7, 1))
    descriptor = pool_feature_maps(maps, pooling)[0]
    other = np.zeros(8, np.float32)
    other[np.argmin(feature)] = 1.0
    other -= (other @ feature) / (feature @ feature) * feature  # orthogonal to the feature
    changed = maps.copy()
    changed[0, 6, 0] = other  # the bottom-left corner shows something else
    cells = cell_similarities(descriptor, changed, pooling)[0]
    assert cells[6, 0] == pytest.approx(0.0, abs=1e-6)
    rest = np.ones((7, 7), bool)
    rest[6, 0] = False
    np.testing.assert_allclose(cells[rest], 1.0, atol=1e-6)


@pytest.mark.fast
def test_fast_grid2x2_compares_each_cell_with_its_own_quadrants_vector():
    maps = np.random.default_rng(2).random((1, 7, 7, 8))
    descriptor = pool_feature_maps(maps, "grid2x2")[0]
    cells = cell_similarities(descriptor, maps, "grid2x2")[0]

    def cosine(cell, rows, cols):  # with the normalised mean of the cells of one quadrant
        mean = maps[0, rows, cols].mean(axis=(0, 1))
        return float(maps[0, cell[0], cell[1]] @ mean / np.linalg.norm(maps[0, cell[0], cell[1]]) / np.linalg.norm(mean))

    top, bottom, left, right = slice(0, 4), slice(3, 7), slice(0, 4), slice(3, 7)
    assert cells[0, 6] == pytest.approx(cosine((0, 6), top, right))     # top-right corner: one quadrant
    assert cells[5, 1] == pytest.approx(cosine((5, 1), bottom, left))
    assert cells[3, 5] == pytest.approx((cosine((3, 5), top, right) + cosine((3, 5), bottom, right)) / 2)  # middle row
    assert cells[3, 3] == pytest.approx(np.mean([cosine((3, 3), rows, cols) for rows in (top, bottom)
                                                 for cols in (left, right)]))  # the centre: all four


@pytest.mark.fast
def test_fast_bad_inputs_are_refused_with_a_clear_message(tmp_path):
    from engine_support import hand_built_index

    index = hand_built_index(count=8, dimensions=64, image_dir=tmp_path)
    flattened = dataclasses.replace(index, recipe=dataclasses.replace(index.recipe, pooling="flatten", metric="euclidean"))
    with pytest.raises(SettingsError, match="need a recipe that pools"):
        similarity_map(flattened, "1000", "1001")
    with pytest.raises(KeyError, match="ProductId '99' is not in the catalogue"):
        similarity_map(index, "99", "1001")
    with pytest.raises(ValueError, match="No product given"):
        similarity_maps(index, "1000", [])
    with pytest.raises(SettingsError, match="does not fit feature maps of 8 channels"):
        cell_similarities(np.ones(64), np.ones((1, 7, 7, 8)), "grid2x2")


@pytest.mark.fast
def test_fast_maps_come_from_the_injected_network_through_the_catalogue_pipeline(tmp_path):
    from engine_support import hand_built_index

    index = hand_built_index(count=8, dimensions=64, image_dir=tmp_path)  # grid2x2 descriptors of 4 x 16 numbers
    seen = []

    def network(pixels, recipe):  # what the backbone would give: a 7x7x16 map per photo, flattened
        seen.append((pixels.shape, recipe.pooling))
        return np.tile(index.vectors[index.positions["1003"]].reshape(4, 16)[0], (len(pixels), 49))

    cells = similarity_maps(index, "1003", ["1001", "1002"], network=network)
    assert seen == [((2, 224, 224, 3), "flatten")]
    assert cells.shape == (2, 7, 7)
    # every cell is the query's top-left quadrant vector: a cosine of 1 there
    np.testing.assert_allclose(cells[:, 0, 0], 1.0, atol=1e-5)
