"""Search: the products most like a catalogue product or a photo, with filters and a short "why"."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import pandas as pd

from .ann import rank_with_faiss, uses_faiss
from .catalog import FILTER_COLUMNS, normalize_product_id, unknown_product_message
from .colour import colour_names
from .errors import SearchError
from .index import DEFAULT_COLOUR_WEIGHT, Index, Query, colour_aware_similarity, describe_photo, euclidean_similarities, product_query, top_k
from .milvus_search import rank_with_milvus, uses_milvus

MAX_RESULTS = 100
MAX_SHOWN = 20  # results on one screen of the widget or the app
# the catalogue's columns in a result table (between its rank and its scores), and those the "why" compares
RESULT_COLUMNS = ["ProductId", "ProductTitle", "Gender", *FILTER_COLUMNS, "image_path"]
WHY_COLUMNS = ("ProductType", "Colour", "Usage")
# A photo whose product could not be told apart from its background (Query.doubt) has uncertain
# colours: its ranking keeps only this share of the colour weight and leans on shape.
UNSURE_COLOUR_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How to search, beyond the query and k: the same options for products and photos.

    Attributes:
        subcategory, product_type, colour, usage: keep only these values (a string or a list).
        colour_weight: 0 ranks by the network alone, 1 by type and colour alone
            (None: DEFAULT_COLOUR_WEIGHT). Recipes compared by Euclidean distance ignore it.
        min_similarity: drop results below this score.
        across_genders: a product query searches every gender, not only the product's own.
        include_duplicates: a product query also returns the copies of its own photo.

    >>> SearchOptions(colour="Black", colour_weight=0.2).filters()["Colour"]
    'Black'
    """

    subcategory: object = None
    product_type: object = None
    colour: object = None
    usage: object = None
    colour_weight: float | None = None
    min_similarity: float | None = None
    across_genders: bool = False
    include_duplicates: bool = False

    def filters(self) -> dict:
        """The filters by catalogue column: {"SubCategory": ..., "ProductType": ..., "Colour": ..., "Usage": ...}."""
        return dict(zip(FILTER_COLUMNS, (self.subcategory, self.product_type, self.colour, self.usage)))


def search_options(options: SearchOptions | None = None, **choices) -> SearchOptions:
    """`options` (or the defaults) with the keyword `choices` applied; an unknown keyword, or a yes/no
    option that is not True or False, is refused."""
    known = [field.name for field in dataclasses.fields(SearchOptions)]
    unknown = sorted(set(choices) - set(known))
    if unknown:
        raise SearchError(f"Unknown search option(s) {', '.join(unknown)}; the options are {', '.join(known)}.")
    options = dataclasses.replace(options or SearchOptions(), **choices)
    for name in ("across_genders", "include_duplicates"):
        check_flag(name, getattr(options, name))
    return options


def check_k(k) -> int:
    """k must be a whole number from 1 to MAX_RESULTS; more than the candidates simply returns them all."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, str, float)):
        raise SearchError(f"k must be a whole number of results, got {k!r}.")
    try:
        value = int(str(k).strip()) if isinstance(k, str) else int(k)
    except ValueError:
        raise SearchError(f"k must be a whole number of results, got {k!r}.") from None
    if isinstance(k, float) and not k.is_integer():
        raise SearchError(f"k must be a whole number of results, got {k!r}.")
    if not 1 <= value <= MAX_RESULTS:
        raise SearchError(f"k must be between 1 and {MAX_RESULTS}, got {value}.")
    return value


def _number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, str)):
        raise SearchError(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise SearchError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(number) and low is None and high is None:
        raise SearchError(f"{name} must be a finite number, got {value!r}.")
    if not np.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        raise SearchError(f"{name} must be between {low} and {high}, got {value!r}.")
    return number


def check_colour_weight(index: Index, colour_weight) -> float:
    """The colour weight to rank with: 0 for Euclidean recipes, else the given one, checked."""
    value = DEFAULT_COLOUR_WEIGHT if colour_weight is None else colour_weight
    number = _number("colour_weight (0 = pure visual, 1 = pure colour)", value, 0.0, 1.0)
    return 0.0 if index.metric == "euclidean" else number  # raw distances do not blend with similarities


def check_flag(name: str, value) -> bool:
    """A yes/no option must be True or False: a string such as "no" would otherwise count as yes."""
    if not isinstance(value, (bool, np.bool_)):
        raise SearchError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_filter(column: str, wanted) -> list[str] | None:
    """A filter's chosen values as a list of strings (None: no filter); anything else is refused."""
    if wanted is None:
        return None
    if isinstance(wanted, str):
        return [wanted]
    if not isinstance(wanted, (list, tuple, set, frozenset, np.ndarray, pd.Series, pd.Index)):
        raise SearchError(f"The {column} filter takes a value or a list of values, got {wanted!r} "
                          f"({type(wanted).__name__}): give one {column} as text, or a list of them.")
    values = list(np.asarray(wanted, dtype=object).ravel()) if isinstance(wanted, np.ndarray) else list(wanted)
    wrong = [value for value in values if not isinstance(value, str)]
    if wrong:
        raise SearchError(f"The {column} filter's values must be text (a catalogue's {column}), "
                          f"got {', '.join(map(repr, wrong[:5]))}.")
    return values or None


def filter_choices(index: Index, column: str) -> list[str]:
    """The values a filter on `column` can keep, in order (blank labels are no choice)."""
    return index.codes[column].categories.tolist()


def filter_mask(index: Index, rows: slice, filters: dict) -> np.ndarray | None:
    """Boolean mask over `rows` for the chosen SubCategory/ProductType/Colour/Usage values."""
    mask = None
    for column, chosen in filters.items():
        wanted = check_filter(column, chosen)
        if wanted is None:
            continue
        categories = index.codes[column].categories
        unknown = [value for value in wanted if value not in categories]
        if unknown:
            raise SearchError(f"No product has {column} {', '.join(map(repr, unknown))}; "
                              f"choose from {', '.join(map(str, categories[:30]))}.")
        codes = index.codes[column].codes[rows]
        keep = np.isin(codes, [categories.get_loc(value) for value in wanted])
        mask = keep if mask is None else mask & keep
    return mask


def rank(index: Index, query: Query, rows: slice, k: int, exclude: np.ndarray | None,
         mask: np.ndarray | None, colour_weight: float, filters: dict | None = None) -> tuple[np.ndarray, dict]:
    """Top-k rows (absolute positions) within `rows`, best first, and their scores.

    `exclude` (positions within `rows`) and `mask` (booleans over `rows`) leave products out;
    `filters` are the column filters behind `mask` (SearchOptions.filters()), which Milvus applies itself."""
    if uses_milvus(index):  # the milvus_uri setting: Milvus candidates (see milvus_search.py)
        return rank_with_milvus(index, query, rows, k, exclude, mask, colour_weight, filters)
    if uses_faiss(index):  # a large catalogue: FAISS candidates (see ann.py)
        return rank_with_faiss(index, query, rows, k, exclude, mask, colour_weight)
    pairs = index.pair_scores.get((rows.start, rows.stop)) if index.pair_scores else None
    visual = None
    if index.metric == "euclidean":  # the article: Euclidean distance over the descriptors
        score = euclidean_similarities(index.vectors[rows], query.vector)
    elif pairs is not None and query.position is not None:  # a product of this slice: its precomputed row
        visual, colour = (matrix[query.position - rows.start] for matrix in pairs)
        score = (1 - colour_weight) * visual.astype(np.float64) + colour_weight * colour
    else:
        visual = index.vectors[rows] @ query.vector
        score = visual.astype(np.float64)
        if colour_weight > 0:
            score = (1 - colour_weight) * score + colour_weight * colour_aware_similarity(index, rows, query, visual)
    if mask is not None:
        score[~mask] = -np.inf
    if exclude is not None:
        score[exclude] = -np.inf
    return top_k(index, query, np.arange(rows.start, rows.stop), score, k, colour_weight, approximate_visual=visual)


def search_backend(index: Index) -> str:
    """Which engine finds the candidates that the exact ranking orders (the app shows it)."""
    if uses_milvus(index):
        return index.milvus.describe() if index.milvus is not None else f"Milvus at {index.milvus_uri} (connects at the first query)"
    if uses_faiss(index):
        return "FAISS in this process (approximate candidates, exact ranking)"
    return "this process (exact)"


def similar_products(index: Index, product_id, k: int = 5, *, options: SearchOptions | None = None,
                     **choices) -> pd.DataFrame:
    """The k products that look most like `product_id`, best first.

    Args:
        index: the searchable catalogue (load_index or build_index).
        product_id: a ProductId ("13683", 13683 and " 13683 " are the same).
        k: how many results (1 to MAX_RESULTS); fewer come back when fewer products qualify.
        options: a SearchOptions; any of its fields can also be given as a keyword
            (colour_weight=0, colour="Black", across_genders=True, ...).

    Returns:
        A DataFrame, best first: rank, ProductId, ProductTitle, Gender, SubCategory, ProductType,
        Colour, Usage, image_path, similarity, visual_similarity, colour_similarity, why.
        By default only products of the same gender are considered (the article's rule) and the
        product itself and its byte-identical copies are left out.

    >>> similar_products(index, "13683", k=5, colour_weight=0)  # doctest: +SKIP
    """
    options = search_options(options, **choices)
    position = product_position(index, product_id)
    gender = index.catalog.at[position, "Gender"]
    rows = slice(0, len(index)) if options.across_genders else index.gender_rows[gender]
    exclude = np.array([position - rows.start]) if options.include_duplicates \
        else np.flatnonzero(index.groups[rows] == index.groups[position])
    return _search(index, product_query(index, position), k, rows, exclude, options)


def product_position(index: Index, product_id) -> int:
    """The index row of a product; KeyError saying why it was left out, or naming close ids."""
    product_id = normalize_product_id(product_id)
    if product_id not in index.positions:
        raise KeyError(unknown_product_message(index.catalog["ProductId"], product_id, index.left_out))
    return index.positions[product_id]


def similar_to_image(index: Index, image, k: int = 5, *, gender: str | None = None,
                     options: SearchOptions | None = None, **choices) -> pd.DataFrame:
    """The k catalogue products that look most like any photo (path, bytes, file object or PIL image).

    The photo goes through exactly the catalogue's pipeline. Without `gender`, all genders are
    searched (a gender is one of index.gender_rows). Options as for similar_products.

    >>> similar_to_image(index, "my_shoe.jpg", k=5, gender="Men")  # doctest: +SKIP
    """
    return similar_to_query(index, describe_photo(index, image), k, gender=gender,
                            options=search_options(options, **choices))


def similar_to_query(index: Index, query: Query, k: int = 5, *, gender: str | None = None,
                     options: SearchOptions | None = None, **choices) -> pd.DataFrame:
    """The k products most like an already described photo (see index.describe_photo): re-ranking
    with other settings needs no second pass through the network."""
    return _search(index, query, k, _gender_slice(index, gender), None, search_options(options, **choices))


def query_positions(index: Index, query: Query, k: int = 5, *, gender: str | None = None,
                    colour_weight: float | None = None) -> np.ndarray:
    """The index rows similar_to_query would show, best first, without building its table: the
    held-out evaluation searches thousands of uploads."""
    options = search_options(None, colour_weight=colour_weight)
    return _ranked(index, query, k, _gender_slice(index, gender), None, options)[0]


def _gender_slice(index: Index, gender: str | None) -> slice:
    if gender is not None and gender not in index.gender_rows:
        genders = ", ".join(name or "'' (the products without a gender)" for name in index.gender_rows)
        raise SearchError(f"Unknown gender {gender!r}; choose one of {genders}, or None for the whole catalogue.")
    return slice(0, len(index)) if gender is None else index.gender_rows[gender]


def _ranked(index: Index, query: Query, k, rows: slice, exclude, options: SearchOptions) -> tuple[np.ndarray, dict]:
    """The rows of the results and their scores, as every search path ranks them."""
    k = check_k(k)
    colour_weight = check_colour_weight(index, options.colour_weight)
    if query.doubt is not None:  # the photo's colours are uncertain: lean on shape
        colour_weight *= UNSURE_COLOUR_SHARE
    minimum = None if options.min_similarity is None else _number("min_similarity", options.min_similarity)
    filters = options.filters()
    mask = filter_mask(index, rows, filters)
    positions, scores = rank(index, query, rows, k, exclude, mask, colour_weight, filters)
    if minimum is not None:
        kept = scores["similarity"] >= minimum
        positions, scores = positions[kept], {name: values[kept] for name, values in scores.items()}
    return positions, scores


def _search(index: Index, query: Query, k, rows: slice, exclude, options: SearchOptions) -> pd.DataFrame:
    positions, scores = _ranked(index, query, k, rows, exclude, options)
    # the table is built from arrays, not row by row: in the app this runs at every answer
    columns = {column: index.catalog[column].array.take(positions) for column in RESULT_COLUMNS}
    product = None if query.position is None else index.catalog.loc[query.position]
    query_colours = colour_names(query.colour, top=3)
    labels = [dict(zip(WHY_COLUMNS, values)) for values in zip(*(columns[column] for column in WHY_COLUMNS))]
    why = [explain_similarity(product, result, _named_colours(index, position), query_colours, query.doubt)
           for position, result in zip(positions.tolist(), labels)]
    return pd.DataFrame({"rank": np.arange(1, len(positions) + 1), **columns, **scores, "why": why})


def _named_colours(index: Index, position: int) -> list[str]:
    """colour_names of an index row, counted once per index (Index.named_colours)."""
    if position not in index.named_colours:
        index.named_colours[position] = colour_names(index.colours[position])
    return index.named_colours[position]


def explain_similarity(query: pd.Series | dict | None, result: pd.Series | dict, result_colours: list[str],
                       query_colours: list[str], doubt: str | None = None) -> str:
    """A short 'why similar': the attributes the two products share and their dominant colours
    (`result_colours` and `query_colours`: their colour_names, named once per product).

    `doubt` (Query.doubt): the query photo's product could not be told apart from its background,
    so no colour is claimed as shared and the text says the colours are uncertain."""
    parts = []
    if query is not None:
        shared = [f"{column} {result[column]}" for column in WHY_COLUMNS
                  if result[column] and query[column] == result[column]]  # two blanks share nothing
        if shared:
            parts.append("same " + ", ".join(shared))
    common = [] if doubt else [name for name in result_colours if name in query_colours]
    parts.append(f"both {' and '.join(common)}" if common else f"colours: {', '.join(result_colours)}")
    if doubt:
        parts.append("your photo's colours are uncertain (its background could not be told apart), so shape counted more")
    return "; ".join(parts)


def doubt_note(query: Query) -> str | None:
    """What the widget and the app say about a photo whose product could not be told apart from
    its background (None when it could)."""
    if query.doubt is None:
        return None
    return (f"Note: in your photo {query.doubt}. Its colours are uncertain, so the ranking leans on shape "
            f"(the colour weight counts {UNSURE_COLOUR_SHARE:.0%}). A photo of the product alone on a plain "
            "background gives better results.")
