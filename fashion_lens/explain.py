"""What the network looks at: where in a result's photo the query's descriptor is found.

The backbone turns a photo into a 7x7 grid of cells, each a C-number vector (C = 1280 for
MobileNetV2 at 224 pixels), describing one 32x32 patch of the square the network sees; the
recipe pools that map into the stored descriptor. A similarity map is the cosine between the
query's descriptor and each cell of the result's map: high where the result shows what the
query's descriptor holds.

"The query's descriptor" is the stored one (`Index.vectors`): the network part only, since
colour is kept apart (`Index.colours`). It is compared with each cell the way the recipe pooled
it, so that the cell cosines are on the scale of the ranking's visual similarity:

- "gap": one vector (C numbers) for the whole photo: every cell is compared with it;
- "grid2x2": four quadrant vectors (the photo's top-left, top-right, bottom-left and bottom-right,
  each normalised): a cell is compared with the quadrant vector of its own quadrant, and a cell of
  the middle row or column, which the recipe's overlapping quadrants share, gets the mean of its
  quadrants' cosines. The visual similarity of two products is the mean, over the quadrants, of
  the cosine between the query's quadrant vector and the mean of the result's cells in it.

The result's map is computed again from its photo, through exactly the catalogue's pipeline
(feature_cache.photo_inputs, then features.run_network with maps_recipe): pooled the recipe's
way, it gives back the stored descriptor (tests/test_explain.py checks it).
"""

from __future__ import annotations

import numpy as np

from .errors import SettingsError
from .feature_cache import photo_inputs
from .features import grid_quadrants, l2_normalize, maps_recipe, run_network, unflatten_maps
from .images import load_image
from .index import Index
from .search import product_position

MAP_POOLINGS = ("gap", "grid2x2")  # recipes whose descriptor can be compared with a single cell


def network_inputs(index: Index, product_ids) -> np.ndarray:
    """The squares the network sees for these products, (N, size, size, 3) uint8: each photo read,
    separated from its background and squared as the index's recipe says (as for the catalogue)."""
    positions = [product_position(index, product_id) for product_id in _as_list(product_ids)]
    return np.stack([photo_inputs(load_image(index.catalog.at[position, "image_path"]), index.recipe)[0]
                     for position in positions])


def feature_maps(index: Index, product_ids, *, network=run_network) -> np.ndarray:
    """The last feature maps of these products' photos, (N, 7, 7, C) float32, as the index's
    recipe computes them (one network call for all). Pooled with features.descriptors_from_maps
    they give back the stored descriptors.

    `network`: (pixels, recipe) -> descriptors (run_network unless a test injects one).

    >>> maps = feature_maps(index, ["13683"])  # doctest: +SKIP
    """
    _check_recipe(index)
    return maps_of_squares(network_inputs(index, product_ids), index, network=network)


def maps_of_squares(squares: np.ndarray, index: Index, *, network=run_network) -> np.ndarray:
    """The last feature maps (N, 7, 7, C) of squares the network sees (network_inputs), by the index's recipe."""
    shared = maps_recipe(_check_recipe(index))
    return unflatten_maps(np.asarray(network(squares, shared), dtype=np.float32), shared)


def similarity_maps(index: Index, query_id, result_ids, *, network=run_network) -> np.ndarray:
    """For each result, the cosine between the query's descriptor and each cell of the result's
    last feature map: (N, 7, 7), one map per result, in the order given (module docstring).

    Args:
        index: the searchable catalogue the query and results belong to (its recipe must pool: gap or grid2x2).
        query_id: the query's ProductId.
        result_ids: the results' ProductIds (e.g. similar_products(...)["ProductId"]); the query's own
            id shows where its descriptor lies in its own photo.
        network: (pixels, recipe) -> descriptors (run_network unless a test injects one).

    >>> similarity_maps(index, "13683", similar_products(index, "13683", k=4)["ProductId"])  # doctest: +SKIP
    """
    query = index.vectors[product_position(index, query_id)]
    return cell_similarities(query, feature_maps(index, result_ids, network=network), index.recipe.pooling)


def similarity_map(index: Index, query_id, result_id, *, network=run_network) -> np.ndarray:
    """The 7x7 map of one result: the cosine between the query's descriptor and each cell of the
    result's last feature map (see similarity_maps).

    >>> similarity_map(index, "13683", "13684").round(2)  # doctest: +SKIP
    """
    return similarity_maps(index, query_id, [result_id], network=network)[0]


def cell_similarities(descriptor: np.ndarray, maps: np.ndarray, pooling: str) -> np.ndarray:
    """Cosine of a pooled descriptor (gap: C numbers; grid2x2: 4C) with each cell of (N, H, W, C)
    feature maps, each cell compared with the part of the descriptor that pooled its place."""
    maps = np.asarray(maps, dtype=np.float64)
    count, height, width, channels = maps.shape
    parts = np.asarray(descriptor, dtype=np.float64).reshape(-1, channels)
    if len(parts) != {"gap": 1, "grid2x2": 4}.get(pooling):
        raise SettingsError(f"A {pooling} descriptor of {parts.size} numbers does not fit feature maps of "
                            f"{channels} channels: the descriptor and the maps must come from the same recipe.")
    parts, cells = l2_normalize(parts), l2_normalize(maps)
    if pooling == "gap":
        return cells @ parts[0]
    total, covered = np.zeros((count, height, width)), np.zeros((height, width))
    for number, (rows, cols) in enumerate(grid_quadrants(height, width)):
        total[:, rows, cols] += cells[:, rows, cols] @ parts[number]
        covered[rows, cols] += 1
    return total / covered


def _check_recipe(index: Index):
    recipe = index.recipe
    if recipe.pooling not in MAP_POOLINGS:
        raise SettingsError(f"Similarity maps need a recipe that pools the feature map ({' or '.join(MAP_POOLINGS)}); "
                            f"this index's recipe {recipe.name} keeps it {recipe.pooling}, which has no "
                            "descriptor to compare a single cell with.")
    return recipe


def _as_list(product_ids) -> list:
    ids = [product_ids] if isinstance(product_ids, (str, int, np.integer)) else list(product_ids)
    if not ids:
        raise ValueError("No product given: pass one ProductId or a list of them.")
    return ids
