"""The interactive recommender for JupyterLab (ipywidgets): pick a product or upload a photo,
see the most similar products as photos, follow one, go back."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import html

import pandas as pd

from .catalog import MAX_MATCHES, find_products, gender_label
from .colour import colour_names
from .errors import CatalogError, ImageError, SearchBackendError, SearchError, SettingsError, WeightsError
from .images import jpeg_bytes, load_image, thumbnail
from .index import DEFAULT_COLOUR_WEIGHT, Index, Query, describe_photo
from .search import MAX_SHOWN, check_k, doubt_note, filter_choices, product_position, similar_products, similar_to_query

ANY = "any"  # the filter choice that keeps every value
# The static copy of the answer (text/html) that viewers without a kernel show: thumbnails' width, results per row
STATIC_THUMBNAIL, STATIC_COLUMNS = 110, 6
# HEIC/HEIF (iPhone photos) are accepted to be answered with how to convert them (images.load_image).
UPLOAD_TYPES = ".jpg,.jpeg,.png,.heic,.heif"


@dataclasses.dataclass(eq=False)
class WidgetQuery:
    """What the recommender widget searches for: a catalogue product, or a photo embedded once."""

    gender: str
    product_id: str | None = None
    photo_name: str | None = None
    description: Query | None = None   # the photo's descriptors (never recomputed)
    jpeg: bytes | None = None          # the photo's thumbnail

    def same_as(self, other: WidgetQuery | None) -> bool:
        return other is not None and (self is other or (self.product_id is not None and self.product_id == other.product_id))


class RecommenderWidgetBase:
    """The recommender's behaviour; `recommender_widget` mixes it into an ipywidgets VBox.

    State a caller can read: `query` (WidgetQuery or None), `results` (the engine's DataFrame on
    screen), `history` (earlier queries, for Back), `message` (HTML widget: errors, and the note on
    a photo whose product could not be told apart from its background), and the
    controls `gender`, `search`, `matches`, `product_id`, `find_button`, `upload`, `k`,
    `subcategory`, `colour`, `usage`, `colour_weight`, `across_genders`, `back_button`; the
    result cards are `cards` (each with `.product_id`, `.image`, `.caption`, `.button`) inside `grid`.
    """

    def __init__(self, index: Index, product_id=None, k: int = 6, thumbnail_size: int = 150):
        import ipywidgets as widgets

        if len(index) == 0:
            raise CatalogError("The index holds no product: load a catalogue whose photos can be read (load_index).")
        self.index = index
        self.thumbnail_size = thumbnail_size
        self.query: WidgetQuery | None = None
        self.results: pd.DataFrame | None = None
        self.history: list[WidgetQuery] = []
        self.cards: list = []
        self._thumbnails: dict[str, bytes] = {}
        self._quiet = 0  # > 0 while the widget sets its own controls: their observers stay silent
        wide = {"description_width": "initial"}

        genders = list(index.gender_rows)  # one group: a catalogue without genders, nothing to choose
        one_group = {"display": "none"} if len(genders) == 1 else {}
        self.gender = widgets.Dropdown(options=[(self._label(gender), gender) for gender in genders] if "" in genders
                                       else genders, description="Gender", style=wide, layout=widgets.Layout(**one_group))
        self.search = widgets.Text(description="Search", placeholder="part of a title or a ProductId", style=wide)
        self.matches = widgets.Dropdown(description="Product", style=wide, layout=widgets.Layout(width="420px"))
        self.product_id = widgets.Text(description="ProductId", placeholder=f"e.g. {index.catalog['ProductId'].iloc[0]}",
                                       continuous_update=False,
                                       style=wide, layout=widgets.Layout(width="200px"))
        self.find_button = widgets.Button(description="Show similar", icon="search")
        self.upload = widgets.FileUpload(accept=UPLOAD_TYPES, multiple=False, description="Your photo")
        if check_k(k) > MAX_SHOWN:
            raise SearchError(f"The widget shows at most {MAX_SHOWN} results; got k={k}.")
        self.k = widgets.IntSlider(value=check_k(k), min=1, max=MAX_SHOWN,
                                   description="Results", continuous_update=False, style=wide)
        self.colour_weight = widgets.FloatSlider(value=DEFAULT_COLOUR_WEIGHT, min=0.0, max=1.0, step=0.05,
                                                 description="Colour weight", continuous_update=False, style=wide,
                                                 disabled=index.metric == "euclidean")
        self.across_genders = widgets.Checkbox(value=False, description="across all genders", indent=False,
                                               layout=widgets.Layout(**one_group))
        self.subcategory, self.colour, self.usage = (
            widgets.Dropdown(options=[ANY, *filter_choices(index, column)], description=column, style=wide)
            for column in ("SubCategory", "Colour", "Usage")
        )
        self.back_button = widgets.Button(description="Back", icon="arrow-left", disabled=True)
        self.message = widgets.HTML()
        self.message.add_class("fl-message")
        self.summary = widgets.HTML()
        self.query_image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{thumbnail_size}px"))
        self.query_caption = widgets.HTML(layout=widgets.Layout(width=f"{thumbnail_size + 20}px"))
        query_panel = widgets.VBox([widgets.HTML("<b>Query</b>"), self.query_image, self.query_caption],
                                   layout=widgets.Layout(border="2px solid darkred", padding="6px", margin="4px",
                                                         display="none"))
        query_panel.add_class("fl-query")
        self.query_panel = query_panel
        self.grid = widgets.Box(layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.grid.add_class("fl-results")
        for control, css_class in ((self.gender, "fl-gender"), (self.search, "fl-search"), (self.matches, "fl-matches"),
                                   (self.k, "fl-k")):
            control.add_class(css_class)  # handles for the browser test

        self._refresh_matches()
        self.gender.observe(self._on_gender, "value")
        self.search.observe(lambda change: self._refresh_matches(), "value")
        self.matches.observe(self._on_match, "value")
        self.product_id.observe(self._on_product_id, "value")
        self.find_button.on_click(lambda _: self.query_product(self.product_id.value))
        self.upload.observe(self._on_upload, "value")
        for control in (self.k, self.colour_weight, self.across_genders, self.subcategory, self.colour, self.usage):
            control.observe(self._on_setting, "value")
        self.back_button.on_click(lambda _: self.back())

        super().__init__(children=[
            widgets.HBox([self.gender, self.search, self.matches]),
            widgets.HBox([self.product_id, self.find_button, self.upload]),
            widgets.HBox([self.k, self.colour_weight, self.across_genders]),
            widgets.HBox([self.subcategory, self.colour, self.usage]),
            widgets.HBox([self.back_button, self.message], layout=widgets.Layout(align_items="center")),
            widgets.HBox([query_panel, widgets.VBox([self.summary, self.grid], layout=widgets.Layout(flex="1"))],
                         layout=widgets.Layout(align_items="flex-start")),
        ])
        self.add_class("fl-recommender")
        if product_id is not None:
            self.query_product(product_id)
        else:
            self._say(f"Choose {'a gender and ' if len(genders) > 1 else ''}a product (search by title or type its "
                      "ProductId), or upload a photo.", error=False)

    # ---- the actions (also the calls a test or the benchmark makes) ----

    def query_product(self, product_id) -> bool:
        """Make a catalogue product the query and show its most similar products."""
        text = str(product_id).strip()
        if not text:
            return self._say(f"Type a ProductId (e.g. {self.index.catalog['ProductId'].iloc[0]}) or search by title, "
                             "then choose a product.")
        try:
            position = product_position(self.index, text)
        except KeyError as error:  # not in the catalogue, or left out: the message says which
            return self._say(error.args[0])
        row = self.index.catalog.loc[position]
        return self._go(WidgetQuery(gender=row["Gender"], product_id=row["ProductId"]))

    def query_photo(self, content: bytes, name: str = "the upload") -> bool:
        """Make a photo (JPEG/PNG bytes) the query: the network runs once on it, here."""
        try:
            photo = load_image(content, name=name)
            description = describe_photo(self.index, photo)
        except (ImageError, WeightsError, SettingsError) as error:
            return self._say(str(error))
        query = WidgetQuery(gender=self.gender.value, photo_name=name, description=description,
                            jpeg=jpeg_bytes(thumbnail(photo, self.thumbnail_size)))
        return self._go(query)

    def run_query(self) -> bool:
        """Answer the current query again with the current controls (k, filters, weight, genders)."""
        if self.query is None:
            return self._say("Choose a product or upload a photo first.")
        return self._go(self.query, remember=False)

    def back(self) -> bool:
        """Return to the previous query."""
        if not self.history:
            return self._say("Nothing to go back to: this is the first query.")
        previous = self.history.pop()
        if not self._go(previous, remember=False):
            self.history.append(previous)  # keep it: Back can be tried again after changing a filter
            return False
        return True

    def filters(self) -> dict:
        """The chosen filters, in similar_products' keyword names (None = any)."""
        return {name: None if control.value == ANY else control.value
                for name, control in (("subcategory", self.subcategory), ("colour", self.colour), ("usage", self.usage))}

    # ---- answering ----

    def _answer(self, query: WidgetQuery) -> pd.DataFrame | None:
        """The engine's results for `query` under the current controls; None after saying what is wrong."""
        filters = self.filters()
        try:
            if query.product_id is not None:
                results = similar_products(self.index, query.product_id, k=self.k.value,
                                           across_genders=self.across_genders.value,
                                           colour_weight=self.colour_weight.value, **filters)
            else:  # a photo: the search similar_to_image makes, from the description made at upload
                results = similar_to_query(self.index, query.description, self.k.value,
                                           gender=None if self.across_genders.value else query.gender,
                                           colour_weight=self.colour_weight.value, **filters)
        except KeyError as error:
            self._say(error.args[0] if error.args else str(error))
            return None
        except (SearchError, SearchBackendError) as error:  # a bad query, or the Milvus server gone
            self._say(str(error))
            return None
        if results.empty:
            chosen = [f"{control.description} {control.value}" for control in (self.subcategory, self.colour, self.usage)
                      if control.value != ANY]
            scope = "any gender" if self.across_genders.value else self._label(query.gender)
            widen = not self.across_genders.value and len(self.index.gender_rows) > 1
            self._say(f"No product of {scope} has {' and '.join(chosen)}. Set a filter back to '{ANY}'"
                      f"{' or tick across all genders' if widen else ''}; the previous results are still shown.")
            return None
        return results

    def _go(self, query: WidgetQuery, remember: bool = True) -> bool:
        results = self._answer(query)
        if results is None:
            return False  # the message is shown; query, results and history are unchanged
        if remember and self.query is not None and not query.same_as(self.query):
            self.history.append(self.query)
        self.query, self.results = query, results
        self._draw()
        return True

    # ---- drawing ----

    def _thumbnail(self, path, size: int | None = None) -> bytes:
        key = (path, size or self.thumbnail_size)
        if key not in self._thumbnails:
            self._thumbnails[key] = jpeg_bytes(thumbnail(path, key[1]), quality=85 if size is None else 75)
        return self._thumbnails[key]

    def _repr_mimebundle_(self, **kwargs):
        """The live widget (ipywidgets' view), with a static copy of its answer for viewers without a
        kernel: nbconvert's HTML of a notebook holding no widget state, JupyterLab on an untrusted
        notebook (both show text/html when they cannot show the widget), and text-only viewers."""
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        return {**bundle, "text/plain": self.static_text(), "text/html": self.static_html()}

    def static_text(self) -> str:
        """The answer on screen in one line of text: the query and its results' ProductIds."""
        if self.results is None:
            return "Interactive recommender (run the notebook to use it): no product chosen yet."
        subject = f"ProductId {self.query.product_id}" if self.query.product_id else f"your photo {self.query.photo_name}"
        return (f"Interactive recommender (run the notebook to use it): the {len(self.results)} products most "
                f"similar to {subject}: {', '.join(self.results['ProductId'])}.")

    def static_html(self) -> str:
        """The answer on screen as plain HTML: the query card beside a table of the results, each a
        small JPEG thumbnail (inline, base64) captioned with its rank, ProductId, type, colour and similarity."""
        if self.results is None:
            return f'<div class="fl-static"><p>{html.escape(self.static_text())}</p>{self.message.value}</div>'

        def cell(jpeg: bytes, lines, border: str, attributes: str = "") -> str:
            image = f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}" alt="{html.escape(lines[0])}">'
            return (f'<td {attributes}style="vertical-align:top;text-align:center;padding:4px;border:{border};'
                    f'font-size:85%">{image}<br>{"<br>".join(map(html.escape, lines))}</td>')

        query, rows = self.query, -(-len(self.results) // STATIC_COLUMNS)
        if query.product_id is not None:
            row = self.index.catalog.loc[self.index.positions[query.product_id]]
            photo, lines = row["image_path"], [f"ProductId {row['ProductId']}", f"{row['ProductType']}, {row['Colour']}"]
        else:
            photo, lines = query.jpeg, [query.photo_name, "your photo"]
        cards = [cell(self._thumbnail(photo, STATIC_THUMBNAIL), ["QUERY", *lines], "2px solid darkred", f'rowspan="{rows}" ')]
        cards += [cell(self._thumbnail(result["image_path"], STATIC_THUMBNAIL),
                       [f"#{result['rank']} · ProductId {result['ProductId']}", f"{result['ProductType']}, {result['Colour']}",
                        f"similarity {result['similarity']:.3f}"], "1px solid #ddd") for _, result in self.results.iterrows()]
        grid = [cards[:1 + STATIC_COLUMNS]] + [cards[start:start + STATIC_COLUMNS]
                                               for start in range(1 + STATIC_COLUMNS, len(cards), STATIC_COLUMNS)]
        body = "".join(f"<tr>{''.join(line)}</tr>" for line in grid)
        return (f'<div class="fl-static"><p>{self.summary.value} <i>(a static copy of the interactive recommender: '
                'run the notebook to use it)</i></p>'
                f'<table style="border-collapse:collapse">{body}</table></div>')

    def _draw(self) -> None:
        query = self.query
        with self._quietly():
            self.gender.value = query.gender
            if query.product_id is not None:
                self.product_id.value = query.product_id
            listed = [product_id for _, product_id in self.matches.options]
            self.matches.value = query.product_id if query.product_id in listed else ""
        if query.product_id is not None:
            row = self.index.catalog.loc[self.index.positions[query.product_id]]
            self.query_image.value = self._thumbnail(row["image_path"])
            self.query_caption.value = _card_html(row["ProductTitle"], " · ".join(filter(None, [f"ProductId {row['ProductId']}", row["Gender"]])),
                                                  f"{row['ProductType']}, {row['Colour']}, {row['Usage']}")
            subject = f"{html.escape(row['ProductTitle'])} ({row['ProductId']})"
        else:
            self.query_image.value = query.jpeg
            self.query_caption.value = _card_html(query.photo_name, "your photo",
                                                  f"colours: {', '.join(colour_names(query.description.colour))}")
            subject = f"your photo {html.escape(query.photo_name)}"
        self.query_panel.layout.display = "flex"
        scope = "all genders" if self.across_genders.value else self._label(query.gender)
        self.summary.value = f"<b>{len(self.results)} products most similar to {subject}</b> · {scope}"
        while len(self.cards) < len(self.results):
            self.cards.append(_ResultCard(self))
        for card, (_, row) in zip(self.cards, self.results.iterrows()):
            card.show(row, self._thumbnail(row["image_path"]))
        self.grid.children = tuple(card.box for card in self.cards[: len(self.results)])
        self.back_button.disabled = not self.history
        note = None if query.description is None else doubt_note(query.description)
        self._say(note or "", error=False, colour="#8a5a00")

    def _label(self, gender: str) -> str:
        return gender_label(gender, self.index.gender_rows)

    def _say(self, text: str, error: bool = True, colour: str | None = None) -> bool:
        colour = colour or ("#b00020" if error else "#555")
        self.message.value = f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""
        return False

    @contextlib.contextmanager
    def _quietly(self):
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    # ---- control events ----

    def _refresh_matches(self) -> None:
        rows = self.index.catalog.iloc[self.index.gender_rows[self.gender.value]]
        text = self.search.value.strip()
        found = find_products(rows, text, limit=MAX_MATCHES + 1) if text else rows.head(MAX_MATCHES)
        if text and found.empty:
            prompt = f"no {gender_label(self.gender.value, self.index.gender_rows)} product matches {text!r}"
        elif len(found) > MAX_MATCHES:
            prompt, found = f"first {MAX_MATCHES} matches: choose one (or type more)", found.head(MAX_MATCHES)
        else:
            count = f"{len(found)} match" + ("es" if len(found) != 1 else "")
            prompt = f"{count}: choose one" if text else "choose a product (or type to search)"
        with self._quietly():
            self.matches.options = [(f"— {prompt} —", "")] + [  # "" not None: None would show a blank box
                (f"{title} · {pid}", pid) for pid, title in zip(found["ProductId"], found["ProductTitle"])]
            self.matches.value = ""

    def _on_gender(self, change) -> None:
        self._refresh_matches()
        if not self._quiet and self.query is not None and self.query.product_id is None:
            self._go(dataclasses.replace(self.query, gender=change["new"]), remember=False)

    def _on_match(self, change) -> None:
        if not self._quiet and change["new"]:
            self.query_product(change["new"])

    def _on_product_id(self, change) -> None:
        if not self._quiet and change["new"].strip():
            self.query_product(change["new"])

    def _on_upload(self, change) -> None:
        if self._quiet or not change["new"]:
            return
        upload = change["new"][0]
        self.query_photo(bytes(upload["content"]), upload.get("name") or "the upload")
        with self._quietly():
            self.upload.value = ()  # so that the same file can be chosen again

    def _on_setting(self, change) -> None:
        if not self._quiet and self.query is not None:
            self.run_query()


def _card_html(title: str, *lines: str) -> str:
    title = str(title)
    parts = [f'<div class="fl-title" title="{html.escape(title)}" style="font-weight:bold;line-height:1.2">'
             f'{html.escape(title if len(title) <= 60 else title[:59] + "…")}</div>']
    parts += [f'<div style="font-size:90%;line-height:1.25">{html.escape(line)}</div>' for line in lines]
    return "".join(parts)


class _ResultCard:
    """One result on screen: photo, title, ProductId, similarity, why, and a button to query it."""

    def __init__(self, owner: RecommenderWidgetBase):
        import ipywidgets as widgets

        self.product_id: str | None = None
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{owner.thumbnail_size}px"))
        self.caption = widgets.HTML(layout=widgets.Layout(width=f"{owner.thumbnail_size + 20}px"))
        self.button = widgets.Button(description="Show similar", layout=widgets.Layout(width="auto"))
        self.button.on_click(lambda _: owner.query_product(self.product_id))
        self.box = widgets.VBox([self.image, self.caption, self.button],
                                layout=widgets.Layout(border="1px solid #ddd", padding="6px", margin="4px"))
        self.box.add_class("fl-result")

    def show(self, row: pd.Series, jpeg: bytes) -> None:
        self.product_id = row["ProductId"]
        self.image.value = jpeg
        self.caption.value = _card_html(row["ProductTitle"], f"#{row['rank']} · ProductId {row['ProductId']}",
                                        f"similarity {row['similarity']:.3f}", f"why: {row['why']}")


@functools.cache
def _widget_class() -> type:
    """The widget class, built on first use: importing the package does not import ipywidgets."""
    import ipywidgets as widgets

    class RecommenderWidget(RecommenderWidgetBase, widgets.VBox):
        __doc__ = RecommenderWidgetBase.__doc__

    return RecommenderWidget


def recommender_widget(index: Index, product_id=None, k: int = 6, thumbnail_size: int = 150):
    """The interactive recommender for JupyterLab: pick a product (or upload a photo), see the
    most similar products as photos; click one to follow it, Back to return.

    Args:
        index: the searchable catalogue (load_index).
        product_id: the product shown first (None: the widget waits for a choice).
        k: results shown at first (1 to MAX_SHOWN; a slider changes it).
        thumbnail_size: width of the photos in pixels.

    Returns:
        The widget; displayed when it is the last expression of a cell. Every interaction ranks
        from the index's cached features; only an uploaded photo goes through the network, once.
        `widget.results` holds the DataFrame on screen.

    >>> widget = recommender_widget(index, product_id="13683"); widget  # doctest: +SKIP
    """
    return _widget_class()(index, product_id=product_id, k=k, thumbnail_size=thumbnail_size)
