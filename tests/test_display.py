"""The notebooks' pictures: product grids and charts, drawn from a hand-built index with drawn photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from engine_support import hand_built_index, product_photo
from matplotlib.colors import to_rgba

from fashion_lens.display import (
    metric_curves,
    precision_chart,
    show_geometries,
    show_products,
    show_ranked_queries,
    show_source,
)
from fashion_lens.evaluation import compare_methods, rank_all, relevance_matrix
from fashion_lens.images import thumbnail
from fashion_lens.search import similar_products

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def drawn_index(tmp_path_factory):
    """24 hand-built products, Men and Women alternating, each with a drawn JPEG of its colour."""
    return hand_built_index(count=24, seed=7, genders=("Men", "Women"), image_dir=tmp_path_factory.mktemp("photos"))


def _photo_axes(figure):
    return [axis for axis in figure.axes if axis.images]


def _edge(axis):
    return axis.spines["left"].get_edgecolor()


@pytest.mark.fast
def test_show_products_draws_the_query_then_each_result_with_its_caption(drawn_index):
    results = similar_products(drawn_index, "1005", k=4)
    query = drawn_index.catalog.loc[drawn_index.positions["1005"]]
    figure = show_products(results, title="Like 1005", columns=3, query=query)
    photos = _photo_axes(figure)
    assert len(figure.axes) == 6 and len(photos) == 5  # 2 rows of 3, the last cell empty
    assert photos[0].get_title().startswith("QUERY\nProduct 1005\n1005") and _edge(photos[0]) == to_rgba("darkred")
    for axis, (_, row) in zip(photos[1:], results.iterrows()):
        assert axis.get_title() == f"Product {row['ProductId']}\n{row['ProductId']}  sim {row['similarity']:.2f}"
        assert np.array_equal(axis.images[0].get_array(), np.asarray(thumbnail(row["image_path"])))
    assert figure._suptitle.get_text() == "Like 1005"


@pytest.mark.fast
def test_show_products_takes_an_uploaded_photo_and_refuses_an_empty_list(drawn_index, tmp_path):
    photo = tmp_path / "mine.png"
    product_photo((30, 150, 50)).save(photo)
    empty = similar_products(drawn_index, "1000", k=3, colour="Red")  # no man's product is red
    figure = show_products(empty, query=str(photo))
    assert [axis.get_title() for axis in _photo_axes(figure)] == ["QUERY\n(your photo)"]
    with pytest.raises(ValueError, match="Nothing to show: the result list is empty"):
        show_products(empty)


@pytest.mark.fast
def test_show_ranked_queries_frames_relevant_results_green(drawn_index):
    ranks = rank_all(drawn_index, k=4)
    queries = [0, 5, 13]
    figure = show_ranked_queries(drawn_index, ranks, queries, columns=("ProductType",))
    relevant = relevance_matrix(drawn_index, ranks, ("ProductType",))
    grid = np.array(figure.axes).reshape(len(queries), 5)
    for row, query in zip(grid, queries):
        assert row[0].get_title().startswith(f"QUERY {drawn_index.catalog.at[query, 'ProductId']}")
        assert _edge(row[0]) == to_rgba("darkred")
        expected = ["green" if hit else "lightgrey" for hit in relevant[query]]
        assert [_edge(axis) for axis in row[1:]] == [to_rgba(colour) for colour in expected]
    assert relevant[queries].any() and not relevant[queries].all()  # both frames are exercised
    with pytest.raises(ValueError, match="No query to show"):
        show_ranked_queries(drawn_index, ranks, [])


@pytest.mark.fast
def test_show_geometries_draws_the_photo_and_its_three_squares(tmp_path):
    path = tmp_path / "shoe.jpg"
    product_photo((215, 35, 45), size=(120, 160)).save(path)
    figure = show_geometries(path)
    assert [axis.get_title() for axis in figure.axes] == [
        "photo 120x160", "stretch -> 224x224", "pad -> 224x224", "crop -> 224x224"]
    assert [axis.images[0].get_array().shape for axis in figure.axes] == [(160, 120, 3)] + [(224, 224, 3)] * 3


@pytest.mark.fast
def test_precision_chart_and_metric_curves_draw_one_series_per_method(drawn_index):
    table = compare_methods({"visual": (drawn_index, 0.0), "colour": (drawn_index, 1.0)}, k=3)
    figure = precision_chart(table, title="Methods")
    axis = figure.axes[0]
    assert len(axis.containers) == 2 and all(len(bars) == 4 for bars in axis.containers)  # 2 methods x 4 kinds
    heights = [[bar.get_height() for bar in bars] for bars in axis.containers]
    assert np.allclose(heights, table[[column for column in table.columns if column.startswith("P@")]].to_numpy())
    assert [label.get_text() for label in axis.get_xticklabels()] == ["SubCategory", "ProductType", "Colour",
                                                                     "ProductType and Colour"]
    with pytest.raises(ValueError, match="No precision column"):
        precision_chart(table.drop(columns=[column for column in table.columns if column.startswith("P@")]))
    curves = metric_curves(pd.DataFrame({"a": [0.2, 0.4], "b": [0.5, 0.6]}, index=[1, 5]), xlabel="k")
    assert [line.get_label() for line in curves.axes[0].lines] == ["a", "b"] and curves.axes[0].get_xlabel() == "k"


@pytest.mark.fast
def test_show_source_quotes_the_apps_functions_as_they_are_now():
    shown = show_source(PROJECT_DIR / "app.py", "load_search_index", "show_results").data
    app = (PROJECT_DIR / "app.py").read_text(encoding="utf-8")
    assert shown.startswith("```python\n@st.cache_resource") and shown.endswith("\n```")
    for block in shown.removeprefix("```python\n").removesuffix("\n```").split("\n\n\n"):
        assert block in app  # quoted exactly, decorators included
    assert "def show_results(" in shown and "def main(" not in shown
    with pytest.raises(ValueError, match="no top-level no_such_function"):
        show_source(PROJECT_DIR / "app.py", "no_such_function")
