"""Display: product photos in grids, and the charts of the notebooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import FILTER_COLUMNS, genders_of
from .errors import SettingsError
from .explain import cell_similarities, maps_of_squares, network_inputs
from .features import run_network
from .images import GEOMETRIES, IMAGE_SIZE, load_image, thumbnail, to_square
from .index import Index
from .search import product_position, similar_products
from .settings import show_versions


def setup_notebook() -> dict:
    """The setup cell of every chapter: plotly charts that also show in HTML exports and offline
    (plotly.js embedded once per notebook), and the versions of the libraries behind the results."""
    import plotly.io as pio

    if pio.renderers.default == "plotly_mimetype":  # plotly's own choice inside a Jupyter kernel
        pio.renderers.default = "plotly_mimetype+notebook"
    return show_versions()


def _caption(row: pd.Series, width: int = 28) -> str:
    title = str(row.get("ProductTitle", ""))
    title = title if len(title) <= width else title[: width - 1] + "…"
    caption = f"{title}\n{row['ProductId']}"
    if "similarity" in row and pd.notna(row["similarity"]):
        caption += f"  sim {row['similarity']:.2f}"
    return caption


def _frame(axis, colour: str) -> None:
    """A coloured frame around one photo of a grid (the query, or a relevant result)."""
    axis.axis("on")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def show_products(products: pd.DataFrame, title: str | None = None, columns: int = 6, query=None):
    """Show products (catalogue rows or search results) as a grid of photos with titles.

    `query` (a catalogue row, or a photo path / bytes / PIL image) is drawn first, framed.
    Returns the matplotlib figure, which notebooks display inline.
    """
    import matplotlib.pyplot as plt

    panels = []
    if query is not None:
        if isinstance(query, pd.Series):
            panels.append((query["image_path"], "QUERY\n" + _caption(query.drop(labels="similarity", errors="ignore")), True))
        else:
            panels.append((query, "QUERY\n(your photo)", True))
    panels += [(row["image_path"], _caption(row), False) for _, row in products.iterrows()]
    if not panels:
        raise ValueError("Nothing to show: the result list is empty (loosen the filters or the minimum similarity).")
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (image, caption, is_query) in zip(axes.ravel(), panels):
        axis.imshow(thumbnail(image))
        axis.set_title(caption, fontsize=8, color="darkred" if is_query else "black")
        if is_query:
            _frame(axis, "darkred")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    plt.close(figure)  # notebooks show the returned figure once, not twice
    return figure


# ---------------------------------------------------------------------------
# Charts for the notebooks: the catalogue, the features, the evaluation
# ---------------------------------------------------------------------------

def _value_order(catalog: pd.DataFrame, column: str) -> list:
    """The values of a column, genders in catalogue order, anything else most frequent first."""
    if column == "Gender":
        return genders_of(catalog)
    return catalog[column].value_counts().index.tolist()


def count_plot(catalog: pd.DataFrame, column: str, hue: str | None = None, ax=None):
    """A seaborn count plot of one column, bars sorted by count (the reference's EDA charts); returns the figure.

    Columns with many values are drawn as horizontal bars so their names stay readable.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = _value_order(catalog, column)
    horizontal = len(order) > 6
    if ax is None:
        figure, ax = plt.subplots(figsize=(8, 1 + 0.3 * len(order)) if horizontal else (7, 3.5))
    else:
        figure = ax.figure
    sns.countplot(data=catalog, **{"y" if horizontal else "x": column}, order=order, hue=hue,
                  hue_order=_value_order(catalog, hue) if hue else None, ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fontsize=7, padding=2)
    if hue:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.set_title(f"Products by {column}" + (f" and {hue}" if hue else ""))
    figure.tight_layout()
    plt.close(figure)
    return figure


def interactive_count_plot(catalog: pd.DataFrame, column: str, color: str | None = "Gender"):
    """The plotly version of count_plot: hover for exact counts, click a legend entry to hide it."""
    import plotly.express as px

    order = _value_order(catalog, column)
    keys = [column, color] if color else [column]
    counts = catalog.groupby(keys).size().reset_index(name="products")
    orders = {column: order, **({color: _value_order(catalog, color)} if color else {})}
    figure = px.bar(counts, x="products", y=column, color=color, orientation="h", category_orders=orders,
                    title=f"Products by {column}" + (f" and {color}" if color else ""))
    figure.update_layout(height=160 + 24 * len(order), yaxis_title=None, legend_title_text=color)
    return figure


def category_heatmap(catalog: pd.DataFrame, rows: str = "SubCategory", columns: str = "Gender"):
    """A heatmap of the number of products for each pair of values (e.g. SubCategory x Gender)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = pd.crosstab(catalog[rows], catalog[columns]).reindex(
        index=_value_order(catalog, rows), columns=_value_order(catalog, columns))
    figure, ax = plt.subplots(figsize=(1.5 + 1.2 * table.shape[1], 1 + 0.4 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, linewidths=0.5, ax=ax)
    ax.set_title(f"Products by {rows} and {columns}")
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_samples(catalog: pd.DataFrame, by: str = "SubCategory", per_group: int = 6, seed: int = 0):
    """A grid of example photos: one row per value of `by` (most frequent first), the same
    `per_group` randomly chosen products on every run."""
    import matplotlib.pyplot as plt

    groups = _value_order(catalog, by)
    rng = np.random.default_rng(seed)
    figure, axes = plt.subplots(len(groups), per_group, figsize=(1.7 * per_group + 1.2, 2.3 * len(groups)), squeeze=False)
    for row, value in zip(axes, groups):
        members = catalog[catalog[by] == value]
        picks = members.iloc[np.sort(rng.choice(len(members), size=min(per_group, len(members)), replace=False))]
        for axis in row:
            axis.axis("off")
        for axis, (_, product) in zip(row, picks.iterrows()):
            axis.imshow(thumbnail(product["image_path"], 160))
            axis.set_title(f"{product['Gender']} · {product['ProductType']}", fontsize=7)
        row[0].text(-0.08, 0.5, f"{value}\n({len(members)})", transform=row[0].transAxes,
                    ha="right", va="center", fontsize=9, weight="bold")
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_geometries(image, size: int = IMAGE_SIZE):
    """One photo as loaded, then as the network receives it with each geometry (stretch, pad, crop)."""
    import matplotlib.pyplot as plt

    photo = load_image(image)
    panels = [(f"photo {photo.width}x{photo.height}", np.asarray(photo))]
    panels += [(f"{geometry} -> {size}x{size}", to_square(photo, geometry, size)) for geometry in GEOMETRIES]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.4))
    for axis, (caption, pixels) in zip(axes, panels):
        axis.imshow(pixels)
        axis.set_title(caption, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])  # keep the frame: it shows where the square ends
    figure.tight_layout()
    plt.close(figure)
    return figure


EMBEDDING_METHODS = ("pca", "tsne")


def embedding_map(index: Index, method: str = "tsne", color: str = "SubCategory", seed: int = 0):
    """An interactive 2-D map of the descriptors (PCA, or t-SNE on 50 PCA components): one dot per
    product coloured by `color`, its title on hover. Products the network finds alike sit together."""
    import plotly.express as px
    from sklearn.decomposition import PCA

    if method not in EMBEDDING_METHODS:
        raise SettingsError(f"Unknown map method {method!r}; choose one of {', '.join(EMBEDDING_METHODS)}.")
    if len(index) < 4:
        raise ValueError(f"A map needs at least 4 products; this index has {len(index)}.")
    vectors = np.asarray(index.vectors, dtype=np.float32)
    if method == "pca":
        points = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, *vectors.shape), random_state=seed).fit_transform(vectors)
        perplexity = min(30.0, (len(vectors) - 1) / 3)  # t-SNE needs fewer neighbours than points
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    frame = index.catalog[["ProductId", "ProductTitle", "Gender", *FILTER_COLUMNS]].assign(x=points[:, 0], y=points[:, 1])
    figure = px.scatter(frame, x="x", y="y", color=color, hover_name="ProductTitle",
                        hover_data={"ProductId": True, "Gender": True, "ProductType": True, "Colour": True,
                                    "x": False, "y": False},
                        category_orders={color: _value_order(frame, color)}, render_mode="svg",
                        title=f"{index.recipe.name} descriptors, {method.upper()} map ({len(frame)} products)")
    figure.update_traces(marker={"size": 5, "opacity": 0.75})
    figure.update_layout(height=600, xaxis_title=None, yaxis_title=None)
    return figure


def precision_chart(table: pd.DataFrame, title: str | None = None):
    """Grouped bars of the precision@k columns of compare_methods: one group per kind of relevance,
    one bar per method."""
    import matplotlib.pyplot as plt

    columns = [column for column in table.columns if column.startswith("P@")]
    if not columns:
        raise ValueError("No precision column (named 'P@k ...') to draw: pass the table compare_methods returns.")
    data = table[columns].rename(columns=lambda column: column.split(" ", 1)[1]).T
    figure, ax = plt.subplots(figsize=(2 + 1.6 * len(data), 3.8))
    data.plot.bar(ax=ax, rot=0, width=0.8)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(columns[0].split(" ", 1)[0].replace("P@", "precision@"))
    ax.set_title(title or "Share of the top results that match the query")
    ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    plt.close(figure)
    return figure


def metric_curves(table: pd.DataFrame, xlabel: str, ylabel: str = "precision", title: str | None = None):
    """One line per column of `table` against its index (k, colour weight, ...), markers on the measured points."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 3.8))
    table.plot(ax=ax, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_ranked_queries(index: Index, ranks: np.ndarray, queries, columns=("ProductType", "Colour"),
                        title: str | None = None):
    """One row per query row number: the query (framed dark red) then its ranked results, each framed
    green when it shares `columns` with the query and grey when it does not."""
    import matplotlib.pyplot as plt

    queries = list(queries)
    if not queries:
        raise ValueError("No query to show.")
    catalog = index.catalog
    width = ranks.shape[1] + 1
    figure, axes = plt.subplots(len(queries), width, figsize=(1.9 * width, 2.7 * len(queries)), squeeze=False)
    for row, query in zip(axes, queries):
        cells = [(query, "darkred", "QUERY")] + [
            (result, "green" if all(catalog.at[result, c] == catalog.at[query, c] for c in columns) else "lightgrey",
             f"#{rank}") for rank, result in enumerate(ranks[query], start=1) if result >= 0]
        for axis in row:
            axis.axis("off")
        for axis, (position, colour, label) in zip(row, cells):
            product = catalog.loc[position]
            axis.imshow(thumbnail(product["image_path"], 160))
            axis.set_title(f"{label} {product['ProductId']}\n{product['ProductType']}, {product['Colour']}", fontsize=7)
            _frame(axis, colour)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    plt.close(figure)
    return figure



def show_source(path, *names: str):
    """The code of the top-level functions `names` of a Python file, as a highlighted block: a
    chapter quotes the project's own code (app.py, say) and stays true when the code changes."""
    import ast

    from IPython.display import Markdown

    source = Path(path).read_text(encoding="utf-8")
    found = {node.name: node for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"{path} defines no top-level {', '.join(missing)}; it defines {', '.join(found)}.")
    lines = source.splitlines()
    blocks = []
    for name in names:
        node = found[name]
        start = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
        blocks.append("\n".join(lines[start - 1:node.end_lineno]))
    return Markdown("```python\n" + "\n\n\n".join(blocks) + "\n```")



def confusion_heatmap(table: pd.DataFrame, title: str | None = None):
    """A heatmap of evaluation.confusion_table: one row per query type, the share of its queries'
    top-k places held by each result type (diagonal: the type's precision@k), shares of 1 % and
    more written in percent. Row labels give the number of queries when the table holds them."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if table.empty:
        raise ValueError("The confusion table is empty: it needs at least one query with results.")
    counts = table.attrs.get("queries", {})
    shown = table.rename(index=lambda value: f"{value} ({counts[value]})" if value in counts else value)
    labels = np.where(table.to_numpy() >= 0.01, np.vectorize(lambda share: f"{100 * share:.0f}")(table.to_numpy()), "")
    figure, ax = plt.subplots(figsize=(2.5 + 0.42 * table.shape[1], 1.5 + 0.32 * table.shape[0]))
    sns.heatmap(shown, annot=labels, fmt="", annot_kws={"fontsize": 7}, cmap="Blues", vmin=0, vmax=1,
                linewidths=0.3, linecolor="#eee", cbar_kws={"label": "share of the top-k places"}, ax=ax)
    ax.set_title(title or "Which types the results carry, for each query type (in %)")
    figure.tight_layout()
    plt.close(figure)
    return figure


def show_similarity_maps(index: Index, query_id, result_ids=None, k: int = 4, colour_weight: float | None = None,
                         alpha: float = 0.5, network=run_network):
    """What the network looks at: the query's photo with its own map, then each result's photo with
    its similarity map (explain.similarity_maps: the cosine between the query's descriptor and each
    cell of the result's 7x7 feature map) upsampled over it; bright where the result shows what the
    query's descriptor holds. Photos are the squares the network sees; one colour scale for all panels.

    Args:
        index: the searchable catalogue (a recipe that pools: gap or grid2x2).
        query_id: the query's ProductId.
        result_ids: the ProductIds to explain (None: the query's top k, as similar_products ranks them).
        k, colour_weight: the ranking whose top k is shown when `result_ids` is None.
        alpha: opacity of the map over the photo.
        network: (pixels, recipe) -> descriptors (run_network unless a test injects one).

    >>> show_similarity_maps(index, "13683", k=4)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    query = product_position(index, query_id)
    if result_ids is None:
        result_ids = similar_products(index, query_id, k=k, colour_weight=colour_weight)["ProductId"].tolist()
    positions = [query, *(product_position(index, product_id) for product_id in result_ids)]
    ids = index.catalog["ProductId"].to_numpy()[positions]
    squares = network_inputs(index, ids)
    maps = cell_similarities(index.vectors[query], maps_of_squares(squares, index, network=network), index.recipe.pooling)
    low, high = float(maps.min()), float(maps.max())
    figure, axes = plt.subplots(1, len(positions), figsize=(2.7 * len(positions) + 0.8, 3.6), squeeze=False,
                                layout="constrained")
    for number, (axis, position, square, cells) in enumerate(zip(axes[0], positions, squares, maps)):
        product = index.catalog.loc[position]
        size = square.shape[0]
        axis.imshow(square)
        overlay = axis.imshow(cells, cmap="inferno", vmin=low, vmax=high, alpha=alpha, interpolation="bilinear",
                              extent=(0, size, size, 0))
        visual = float(index.vectors[query] @ index.vectors[position])
        label = "QUERY (its own map)" if number == 0 else f"#{number} visual {visual:.3f}"
        axis.set_title(f"{label}\n{product['ProductId']} · {product['ProductType']}, {product['Colour']}", fontsize=8,
                       color="darkred" if number == 0 else "black")
        _frame(axis, "darkred" if number == 0 else "lightgrey")
    figure.colorbar(overlay, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label="cosine with the query's descriptor")
    figure.suptitle(f"Where each photo shows what {ids[0]}'s descriptor holds ({index.recipe.name})", fontsize=10)
    plt.close(figure)
    return figure
