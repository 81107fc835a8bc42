"""fashion-lens web app: products that look like a catalogue product or like your own photo.

Start it with `make app` (or `python -m streamlit run app.py`) and open http://localhost:8501.
Settings come from the environment, as everywhere in the project (get_settings):
FASHION_LENS_DATA, FASHION_LENS_LAYOUT, FASHION_LENS_COLUMNS (your own catalogue),
FASHION_LENS_ARTIFACTS, FASHION_LENS_BACKBONE, FASHION_LENS_WEIGHTS, and
FASHION_LENS_MILVUS_URI to search through Milvus (the sidebar says which backend answers).
All ranking and loading lives in the package fashion_lens; this file is only the page.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import streamlit as st

from fashion_lens.catalog import FILTER_COLUMNS, MAX_MATCHES, find_products, gender_label, product_row
from fashion_lens.errors import CatalogError, ImageError, SearchBackendError, SearchError, SettingsError, WeightsError
from fashion_lens.features import load_backbone
from fashion_lens.images import build_thumbnails, load_image, stored_thumbnail, thumbnail, thumbnail_store
from fashion_lens.index import DEFAULT_COLOUR_WEIGHT, Index, describe_photo, load_index
from fashion_lens.milvus_search import sync_milvus
from fashion_lens.search import MAX_SHOWN, doubt_note, filter_choices, product_position, search_backend, similar_products, similar_to_query
from fashion_lens.settings import ENVIRONMENT_VARIABLES, RANDOM_WEIGHTS, Settings, get_settings

RESULT_WIDTH = 180  # pixels: five results to a row on a laptop screen, the photos' 256-pixel thumbnails shrunk
ALL_GENDERS = "All genders"
# similar_products / similar_to_image keyword for each filter column
FILTER_ARGUMENTS = {"SubCategory": "subcategory", "ProductType": "product_type", "Colour": "colour", "Usage": "usage"}
# What can go wrong before the first query: each carries a message saying what to do.
LOADING_ERRORS = (SettingsError, CatalogError, WeightsError, SearchBackendError)
# What can go wrong while answering: a bad query, or the Milvus server gone
QUERY_ERRORS = (KeyError, SearchError, SearchBackendError)
# HEIC/HEIF (iPhone photos) are accepted to be answered with how to convert them (images.load_image).
UPLOAD_TYPES = ["jpg", "jpeg", "png", "heic", "heif"]

st.set_page_config(page_title="fashion-lens", page_icon="👗", layout="wide")
st.set_option("client.toolbarMode", "minimal")  # no "Deploy" button: this is a local tool
st.html("""<style>
  /* captions under the photos: larger and darker than Streamlit's default small grey */
  [data-testid="stImageCaption"] { font-size: 0.85rem; color: inherit; line-height: 1.25; }
  .st-key-results [data-testid="stImage"] img { border-radius: 6px; }
  [data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
</style>""")


@st.cache_resource(show_spinner="Loading the catalogue and its features…")
def load_search_index(data_dir: str, artifacts_dir: str, backbone: str, weights: str, layout: str,
                      columns: tuple[tuple[str, str], ...], milvus_uri: str | None = None):
    """Catalogue + features + index, once per process and settings. Missing features are computed
    here, with a progress bar (first start only); with a Milvus setting, the collection is synced
    here too. The warnings met on the way are returned for the page."""
    settings = get_settings(data_dir, artifacts_dir, backbone, weights, layout, dict(columns), milvus_uri)
    progress = {"bar": None, "percent": -1}

    def draw_progress(done: int, total: int) -> None:
        percent = 100 * done // total
        if percent == progress["percent"]:
            return  # redraw once per percent, not once per photo
        progress["percent"] = percent
        text = f"Computing the {backbone} features of {total} photos (first start only): {done}/{total}"
        if progress["bar"] is None:
            progress["bar"] = st.progress(0, text=text)
        progress["bar"].progress(percent, text=text)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            index = load_index(settings=settings, progress=False, on_progress=draw_progress)
            if index.milvus_uri:
                sync_milvus(index)  # its report stays on index.milvus.last_sync (shown by show_engine)
    finally:
        if progress["bar"] is not None:
            progress["bar"].empty()
    notes = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    keep_out_of_collections()
    return index, notes


@st.cache_resource(show_spinner="Preparing the network for photos (first photo only)…")
def load_network(backbone: str, weights: str):
    """The backbone, built before the first photo arrives so that answering a photo is quick."""
    network = load_backbone(backbone, weights)
    keep_out_of_collections()
    return network


def keep_out_of_collections() -> None:
    """Leave what the process holds for good (modules, the catalogue and its index, the network)
    out of the garbage collector's future passes. A full collection over these long-lived objects
    takes about 100 ms of CPU, holding the GIL: Streamlit's own after every run is switched off
    (.streamlit/config.toml, runner.postScriptGC), and Python's automatic ones skip them."""
    gc.collect()
    gc.freeze()


@st.cache_data(max_entries=1024, show_spinner=False)  # about 15 MB: photos users come back to are served from memory
def catalogue_thumbnail(path: str, mtime_ns: int, store: str) -> bytes:
    """A catalogue photo's thumbnail as JPEG bytes, made once into the thumbnail store (keyed by the
    file's modification time, so a replaced photo is read again). The same bytes give the browser
    the same URL, so it does not fetch or decode a photo it has already shown."""
    return stored_thumbnail(path, store)


@functools.cache  # the settings are read once per process, from its environment
def thumbnail_dir() -> str:
    return str(thumbnail_store(get_settings().artifacts_dir))


def product_thumbnail(path: str) -> bytes:
    return catalogue_thumbnail(path, Path(path).stat().st_mtime_ns, thumbnail_dir())


@st.cache_resource(show_spinner=False)
def start_thumbnails(paths: tuple[str, ...]) -> threading.Thread:
    """Make the catalogue's missing thumbnails once, in the background, after the first start: later
    answers read them from the store instead of decoding photos (a restart finds them ready)."""
    worker = threading.Thread(target=build_thumbnails, args=(paths, thumbnail_dir()), name="thumbnails", daemon=True)
    worker.start()
    return worker


def show_engine(settings: Settings, index: Index | None = None) -> None:
    """Which network and weights produce the results (the sidebar's footer)."""
    st.sidebar.divider()
    st.sidebar.subheader("Engine")
    st.sidebar.markdown(f"Backbone **{settings.backbone}**, weights **{settings.weights}**")
    if index is not None:
        st.sidebar.markdown(f"Search: **{search_backend(index)}**")
        if index.milvus is not None and index.milvus.last_sync is not None:
            st.sidebar.caption(str(index.milvus.last_sync))
        st.sidebar.caption(f"{len(index)} products indexed · recipe {index.recipe.name} · "
                           f"weights {index.recipe.weights} · catalogue {settings.data_dir} ({settings.layout} layout)")
    elif settings.milvus_uri:
        st.sidebar.markdown(f"Search: **Milvus at {settings.milvus_uri}**")


def search_options(index: Index) -> tuple[dict, str | None]:
    """The sidebar: number of results, colour weight, filters; and what is wrong with them (None:
    nothing). The page keeps every input as it is when one is wrong, and only skips the search."""
    st.sidebar.header("Search options")
    k = st.sidebar.number_input("Number of results", value=5, step=1, key="k",
                                help=f"From 1 to {MAX_SHOWN}.")
    colour_weight = st.sidebar.slider(
        "Colour weight", 0.0, 1.0, float(DEFAULT_COLOUR_WEIGHT), 0.05, key="colour_weight",
        disabled=index.metric == "euclidean",
        help="0 ranks by shape and texture alone (the network); 1 by colour alone.")
    st.sidebar.subheader("Filters")
    filters = {}
    for column in FILTER_COLUMNS:
        chosen = st.sidebar.multiselect(column, filter_choices(index, column), key=f"filter_{column}",
                                        placeholder="any")
        if chosen:
            filters[column] = chosen
    problem = None if 1 <= k <= MAX_SHOWN else (f"Number of results must be between 1 and {MAX_SHOWN}; "
                                               f"you asked for {k}. Change it in the sidebar.")
    return {"k": int(k), "colour_weight": colour_weight, "filters": filters}, problem


def engine_arguments(options: dict) -> dict:
    return {"k": options["k"], "colour_weight": options["colour_weight"],
            **{FILTER_ARGUMENTS[column]: values for column, values in options["filters"].items()}}


def describe_filters(filters: dict) -> str:
    return "; ".join(f"{column} {' or '.join(values)}" for column, values in filters.items())


def scope_name(index: Index, gender: str) -> str:
    """The products a search of `gender` runs over, in words."""
    if gender:
        return f"{gender} products"
    return "all products" if len(index.gender_rows) == 1 else "products without a gender"


def pick_product(index: Index) -> pd.Series | None:
    """The query product, from a ProductId (as the catalogue writes it) or from words of its title."""
    text = st.text_input("ProductId or words from the title", value=index.catalog["ProductId"].iloc[0],
                         key="product_query", placeholder="e.g. 42419, or: sports shoes").strip()
    if not text:
        st.warning("Enter a ProductId (for example "
                   f"{index.catalog['ProductId'].iloc[0]}) or a few words from a product title.")
        return None
    is_id = text in index.positions or text in index.left_out
    matches = None if is_id else find_products(index.catalog, text, limit=MAX_MATCHES)
    if is_id or (matches.empty and len(text.split()) == 1 and any(char.isdigit() for char in text)):
        try:  # an id, or one word with digits that matches nothing: say why it is not there
            return index.catalog.loc[product_position(index, text)]
        except KeyError as error:
            st.error(error.args[0])
            return None
    if matches.empty:
        st.warning(f"No product title contains “{text}”. Try fewer or other words, or a ProductId.")
        return None
    chosen = st.selectbox(f"{len(matches)} products match “{text}”{f' (first {MAX_MATCHES})' if len(matches) == MAX_MATCHES else ''}",
                          matches["ProductId"].tolist(), key="title_match",
                          format_func=lambda pid: f"{product_row(matches, pid)['ProductTitle']} · {pid}")
    return product_row(index.catalog, chosen)


def show_query(image, caption: str, heading: str, details: str) -> None:
    with st.container(key="query"):
        left, right = st.columns([1, 4], vertical_alignment="center")
        left.image(image, caption=caption, width="stretch")
        right.markdown(f"### {heading}\n\n{details}")


def result_caption(item: dict) -> str:
    """What a result photo says under it: id and title first (the load test reads the id there), then
    its rank, similarity and why it was chosen."""
    return f"{item['ProductId']} · {item['ProductTitle']}  \n**#{item['rank']}** · similarity **{item['similarity']:.2f}**  \n{item['why']}"


def show_results(results: pd.DataFrame, seconds: float, where: str, filters: dict) -> None:
    """The result photos with their captions (title, id, rank, similarity, why), and the same as a
    table on request. The photos go out as one page element: each element is a message the server
    queues, hashes and sends, and under load that work, not the search, decides how fast pages answer."""
    if results.empty:
        st.warning(f"No product matches the filters ({describe_filters(filters)}) among {where}. "
                   "Loosen the filters in the sidebar.")
        return
    st.markdown(f"#### {len(results)} most similar among {where}")
    st.caption(f"Answered in {1000 * seconds:.0f} ms"
               + (f" · filters: {describe_filters(filters)}" if filters else ""))
    with st.container(key="results"):  # thumbnail: the photo upright, as its EXIF orientation says
        st.image([product_thumbnail(path) for path in results["image_path"]],
                 caption=[result_caption(item) for item in results.to_dict("records")], width=RESULT_WIDTH)
    if st.toggle("Show the results as a table", key="results_as_table"):
        st.dataframe(results[["rank", "ProductId", "ProductTitle", "Gender", *FILTER_COLUMNS, "similarity",
                              "visual_similarity", "colour_similarity", "why"]],
                     hide_index=True, key="results_table")


@st.fragment  # a new query reruns this page only, not the title, the sidebar and the mode switch above it
def product_page(index: Index, options: dict, problem: str | None) -> None:
    box, switch = st.columns([3, 1], vertical_alignment="bottom")
    with box:
        query = pick_product(index)
    several = len(index.gender_rows) > 1  # a catalogue without genders has one group: nothing to widen
    across = switch.checkbox("Search across all genders", key="across_genders") if several else False
    if problem is not None:  # every input above keeps its value; only the search waits
        st.error(problem)
        return
    if query is None:
        return
    where = "all genders" if across else scope_name(index, query["Gender"])
    kind = " › ".join(filter(None, (query["Category"], query["SubCategory"], query["ProductType"])))
    facts = " · ".join(filter(None, (f"`{query['ProductId']}`", query["Gender"], kind, query["Colour"], query["Usage"])))
    show_query(product_thumbnail(query["image_path"]), f"Query · {query['ProductId']}", query["ProductTitle"],
               f"{facts}  \nSearching **{where}**" + (" (the product's gender)." if several and not across else "."))
    started = time.perf_counter()
    try:
        results = similar_products(index, query["ProductId"], across_genders=across, **engine_arguments(options))
    except QUERY_ERRORS as error:
        st.error(error.args[0])
        return
    show_results(results, time.perf_counter() - started, where, options["filters"])


def photo_page(index: Index, options: dict, problem: str | None, settings: Settings) -> None:
    box, scope = st.columns([3, 1])
    upload = box.file_uploader("A photo of a product (JPEG or PNG)", type=UPLOAD_TYPES, key="photo")
    genders = list(index.gender_rows)
    gender = ALL_GENDERS if len(genders) == 1 else scope.selectbox(
        "Search among", [ALL_GENDERS, *genders], key="photo_gender",
        format_func=lambda name: name if name == ALL_GENDERS else gender_label(name, genders))
    if problem is not None:  # every input above keeps its value; only the search waits
        st.error(problem)
        return
    try:
        load_network(index.recipe.backbone, index.recipe.weights)
    except WeightsError as error:
        st.error(str(error))
        return
    if upload is None:
        st.info("Upload a photo: the app finds the catalogue products that look most like it.")
        return
    try:
        photo = load_image(upload.getvalue(), name=upload.name)
    except ImageError as error:
        st.error(str(error))
        return
    where = ("all genders" if len(genders) > 1 else "all products") if gender == ALL_GENDERS else scope_name(index, gender)
    show_query(thumbnail(photo), f"Your photo · {upload.name}", "Your photo",
               f"`{upload.name}` · {photo.width}×{photo.height} pixels  \nSearching **{where}**.")
    started = time.perf_counter()
    try:
        with st.spinner("Reading your photo…"):  # what similar_to_image does, keeping the description
            described = describe_photo(index, photo)
            results = similar_to_query(index, described, gender=None if gender == ALL_GENDERS else gender,
                                       **engine_arguments(options))
    except (ImageError, SearchError, SearchBackendError, WeightsError) as error:
        st.error(str(error))
        return
    note = doubt_note(described)
    if note:
        st.warning(note)
    show_results(results, time.perf_counter() - started, where, options["filters"])


def main() -> None:
    st.title("fashion-lens")
    st.caption("Find the catalogue products that look most like a product, or like your own photo.")
    try:
        settings = get_settings()
    except SettingsError as error:
        st.error(str(error))
        return
    if settings.weights == RANDOM_WEIGHTS:
        show_engine(settings)
        st.sidebar.error("Untrained network: no recommendations.")
        st.error(f"{ENVIRONMENT_VARIABLES['weights']}=random builds an untrained network: its rankings "
                 "are meaningless, so the app shows none. Unset it (or set it to imagenet, or to the path of a "
                 "weights file) and restart the app.")
        return
    try:
        index, notes = load_search_index(str(settings.data_dir), str(settings.artifacts_dir),
                                         settings.backbone, settings.weights, settings.layout, settings.columns,
                                         settings.milvus_uri)
    except LOADING_ERRORS as error:
        show_engine(settings)
        st.error(str(error))
        return
    start_thumbnails(tuple(index.catalog["image_path"]))
    options, problem = search_options(index)
    show_engine(settings, index)
    for note in notes:
        st.sidebar.warning(note)
    mode = st.radio("Search by", ["Catalogue product", "Your photo"], horizontal=True, key="mode",
                    label_visibility="collapsed")
    if mode == "Catalogue product":
        product_page(index, options, problem)
    else:
        photo_page(index, options, problem, settings)


main()
