"""Search on Milvus: the catalogue in a Milvus collection proposes candidates, the exact scores rank them.

With the milvus_uri setting (FASHION_LENS_MILVUS_URI: a file path ending in .db for Milvus Lite,
embedded in this process; http(s)://host:19530 for a Milvus server or cluster), similar_products
and similar_to_image take their candidates from Milvus instead of this process. Milvus stores, per
product, the descriptor compressed by PCA to 256 numbers as the FAISS path does (1 KB a product
instead of 20), gender, SubCategory, ProductType, Colour and Usage, the duplicate group, and a
digest of them all. A query asks for the nearest allowed products (gender, filters and the
query's copies as a Milvus filter expression), then ann.rank_candidates ranks them as every path
does: exact scores, the colour blend, ties by ProductId. With full descriptors (dimensions=None)
and a FLAT index the answers are exactly the in-process ones.

sync_milvus makes the collection match the index without a rebuild: products whose digest is new
or different are upserted, products gone from the catalogue deleted, in batches. Each finished
batch is appended to a journal beside the sync state (artifacts/milvus), so an interrupted sync
resumes with what is left and a second sync sends nothing. When the state and Milvus disagree
(state lost, another writer), the digests stored in Milvus are read back instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .ann import FAISS_PCA_DIMENSIONS, FAISS_PROBES, allowed_rows, candidate_count, filtered_probes, fit_pca, ivf_lists, rank_candidates
from .catalog import FILTER_COLUMNS
from .errors import FeatureCacheWarning, SearchBackendError, SearchError, SettingsError
from .index import APPROXIMATE_SEARCH_MIN_PRODUCTS, Index, Query
from .settings import ENVIRONMENT_VARIABLES, check_milvus_uri, get_settings, is_milvus_server
from .storage import atomic_write, writable_dir

MILVUS_PCA_DIMENSIONS = FAISS_PCA_DIMENSIONS
MILVUS_TIMEOUT = 5.0  # seconds to connect: an unreachable server is reported, not waited for
CALL_TIMEOUT = 600.0  # seconds for one call once connected (a flush builds the index of the new rows)
SYNC_BATCH = 1_000    # products per upsert: what an interrupted sync can lose at most
PCA_SAMPLE = 20_000
# Milvus indexes each sealed segment on its own (a server's default 1 GB segment holds about 1M
# products of 1 KB; Milvus Lite's hold 100,000): the IVF lists are sized for a segment, not the catalogue
SEGMENT_PRODUCTS = 1_000_000
INDEX_TYPES = ("auto", "FLAT", "IVF_FLAT")
INSTALL = "pip install -r requirements-scale.txt"
FIELDS = {"SubCategory": "sub_category", "ProductType": "product_type", "Colour": "colour", "Usage": "usage"}
PROJECTION_PROPERTY = "fashion_lens.projection"  # which PCA the stored vectors went through
LISTS_PROPERTY = "fashion_lens.ivf_lists"  # the IVF lists asked for (Milvus Lite 3.2 keeps its own 128 per segment)
ID_LENGTH, TEXT_LENGTH = 64, 512
_SYNC_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What a sync sent: products added, changed and removed; `batches` counts the calls sent."""

    added: int
    changed: int
    removed: int
    unchanged: int
    batches: int
    seconds: float

    def __str__(self) -> str:
        return (f"Milvus sync: {self.added} added, {self.changed} changed, {self.removed} removed "
                f"({self.unchanged} unchanged, {self.seconds:.1f} s)")


@dataclasses.dataclass
class MilvusBackend:
    """A connected collection: the client, the PCA its vectors went through, its index."""

    uri: str
    collection: str
    client: object = dataclasses.field(repr=False)
    mean: np.ndarray | None = dataclasses.field(default=None, repr=False)        # None: full descriptors
    components: np.ndarray | None = dataclasses.field(default=None, repr=False)
    lists: int = 0  # inverted lists of an IVF_FLAT index; 0 for FLAT
    last_sync: SyncReport | None = None
    searches: int = 0  # queries Milvus answered

    @property
    def dimensions(self) -> int | None:
        return None if self.components is None else len(self.components)

    def describe(self) -> str:
        where = f"Milvus server {self.uri}" if is_milvus_server(self.uri) else f"Milvus Lite file {self.uri}"
        stored = f"PCA{self.dimensions}" if self.dimensions else "full descriptors"
        return f"{where}, collection {self.collection} ({stored}, {f'IVF{self.lists}' if self.lists else 'FLAT'})"

    def project(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors if self.components is None else (vectors - self.mean) @ self.components.T

    def close(self) -> None:
        """Disconnect (and stop this process's Milvus Lite server for the file)."""
        self.client.close()
        if not is_milvus_server(self.uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)


def uses_milvus(index: Index) -> bool:
    """Does a search over `index` take its candidates from Milvus? (the setting, or a synced index)"""
    # Euclidean distances over raw maps (the article's method) always stay in-process
    return index.metric == "cosine" and (index.milvus is not None or bool(index.milvus_uri))


@contextlib.contextmanager
def _milvus_calls(uri: str, doing: str):
    """Milvus's own errors as a SearchBackendError that says what to do."""
    from grpc import RpcError
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except (MilvusException, RpcError) as error:
        check = "that it runs" if is_milvus_server(uri) else \
            "that no other process (a notebook, the app) has the file open: a Milvus Lite file serves one process"
        raise SearchBackendError(
            f"Milvus at {uri} failed while {doing}: {getattr(error, 'message', None) or error}. Check {check}, "
            f"and that {ENVIRONMENT_VARIABLES['milvus_uri']} names it; or unset that variable to search in-process."
        ) from error


def connect_milvus(uri: str, timeout: float = MILVUS_TIMEOUT):
    """A MilvusClient for `uri` (a server URI, or a .db file: Milvus Lite); an error within `timeout` s."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise SearchBackendError(
            f"Searching on Milvus ({ENVIRONMENT_VARIABLES['milvus_uri']}={uri}) needs the optional extra: {INSTALL}. "
            "Or unset the variable to search in-process.") from None
    if not is_milvus_server(uri):
        writable_dir(Path(uri).parent)
    with _milvus_calls(uri, f"connecting (timeout {timeout:g} s)"):
        return MilvusClient(uri=uri, timeout=timeout)


def collection_name(index: Index) -> str:
    """fashion_lens_<recipe>_<hash of the recipe>: one collection per way of computing descriptors."""
    recipe = {name: value for name, value in dataclasses.asdict(index.recipe).items() if name != "weights"}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"fashion_lens_{re.sub(r'[^0-9A-Za-z]', '_', index.recipe.name)}_{key}"


def row_digests(index: Index) -> list[str]:
    """A digest per row of what Milvus stores: id, descriptor, gender, filter columns, duplicate group."""
    columns = index.catalog[["ProductId", "Gender", *FILTER_COLUMNS, "duplicate_group"]].astype(str).to_numpy()
    vectors = np.ascontiguousarray(index.vectors)
    return [hashlib.blake2b("\x1f".join(row).encode() + vector.tobytes(), digest_size=12).hexdigest()
            for row, vector in zip(columns, vectors)]


# ---- the sync state: a snapshot plus a journal of the batches finished since -----------------

def _state_paths(state_dir: Path, uri: str, collection: str) -> dict[str, Path]:
    stem = f"{collection}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    return {name: state_dir / f"{stem}.{name}" for name in ("state.npz", "journal", "projection.npz")}


def _read_state(paths: dict[str, Path]) -> dict[str, str]:
    state = {}
    if paths["state.npz"].is_file():
        with np.load(paths["state.npz"]) as stored:
            state = dict(zip(stored["ids"].tolist(), stored["digests"].tolist()))
    if paths["journal"].is_file():
        for line in paths["journal"].read_text().splitlines():
            try:
                batch = json.loads(line)
            except ValueError:  # a line cut short by a crash: its batch is sent again
                continue
            state.update(batch["upserted"])
            for product_id in batch["deleted"]:
                state.pop(product_id, None)
    return state


def _record_batch(paths: dict[str, Path], upserted: dict[str, str], deleted: list[str]) -> None:
    with open(paths["journal"], "a") as journal:
        journal.write(json.dumps({"upserted": upserted, "deleted": deleted}) + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def _save_state(paths: dict[str, Path], state: dict[str, str]) -> None:
    with atomic_write(paths["state.npz"]) as handle:
        np.savez(handle, ids=np.array(list(state), dtype=str), digests=np.array(list(state.values()), dtype=str))
    paths["journal"].unlink(missing_ok=True)  # the snapshot holds it now


def _stored_digests(backend: MilvusBackend, paths: dict[str, Path]) -> tuple[dict[str, str], bool]:
    """What the collection holds, {ProductId: digest}, and whether the sync state said so: the state
    when its count matches Milvus's, else read back from Milvus (state lost, or another writer)."""
    state = _read_state(paths)
    with _milvus_calls(backend.uri, "counting the stored products"):
        count = backend.client.query(backend.collection, filter="", output_fields=["count(*)"],
                                     timeout=CALL_TIMEOUT)[0]["count(*)"]
    if count == len(state):
        return state, True
    stored = {}
    with _milvus_calls(backend.uri, "reading the stored digests"):
        iterator = backend.client.query_iterator(backend.collection, batch_size=10_000,
                                                 output_fields=["product_id", "digest"], timeout=CALL_TIMEOUT)
        while rows := iterator.next():
            stored.update((row["product_id"], row["digest"]) for row in rows)
        iterator.close()
    return stored, False


# ---- the collection ------------------------------------------------------------------------------

def _projection(index: Index, paths: dict[str, Path], dimensions: int | None) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The PCA the stored vectors go through: read from the state folder, else fitted on a sample."""
    if dimensions is None:
        return None, None, "full"
    size = min(len(index), PCA_SAMPLE)
    dimensions = min(dimensions, size, index.vectors.shape[1])
    mean = components = None
    if paths["projection.npz"].is_file():
        with np.load(paths["projection.npz"]) as stored:
            mean, components = stored["mean"], stored["components"]
    if components is None or components.shape != (dimensions, index.vectors.shape[1]):
        sample = np.sort(np.random.default_rng(0).choice(len(index), size, replace=False))
        mean, components = fit_pca(index.vectors[sample], dimensions)
        with atomic_write(paths["projection.npz"]) as handle:
            np.savez(handle, mean=mean, components=components)
    key = hashlib.sha256(mean.tobytes() + components.tobytes()).hexdigest()[:16]
    return mean, components, key


def _create_collection(client, name: str, dimensions: int, index_type: str, lists: int, projection: str) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("product_id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimensions)
    for field in ("gender", *FIELDS.values()):
        schema.add_field(field, DataType.VARCHAR, max_length=TEXT_LENGTH)
    schema.add_field("duplicate_group", DataType.VARCHAR, max_length=ID_LENGTH)
    schema.add_field("digest", DataType.VARCHAR, max_length=32)
    index_params = client.prepare_index_params()
    # L2 on PCA-projected vectors, as the FAISS path: distances survive the centring, so do rankings
    index_params.add_index(field_name="vector", index_type=index_type, metric_type="L2",
                           params={"nlist": lists} if index_type == "IVF_FLAT" else {})
    client.create_collection(name, schema=schema, index_params=index_params,
                             properties={PROJECTION_PROPERTY: projection, LISTS_PROPERTY: str(lists)})


def open_collection(index: Index, uri: str, *, dimensions: int | None | str = "auto", index_type: str = "auto",
                    collection: str | None = None, state_dir: Path | None = None,
                    timeout: float = MILVUS_TIMEOUT) -> tuple[MilvusBackend, dict[str, Path]]:
    """Connect and open (or create) the index's collection; its sync state files. "auto" keeps what
    an existing collection has (else MILVUS_PCA_DIMENSIONS, and FLAT or IVF_FLAT by size)."""
    if index_type not in INDEX_TYPES:
        raise SearchError(f"Unknown Milvus index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}.")
    client = connect_milvus(uri, timeout)
    name = collection or collection_name(index)
    paths = _state_paths(writable_dir(Path(state_dir or get_settings().artifacts_dir / "milvus")), uri, name)
    with _milvus_calls(uri, f"opening the collection {name}"):
        exists = client.has_collection(name, timeout=CALL_TIMEOUT)
        if exists:
            described = client.describe_collection(name, timeout=CALL_TIMEOUT)
            stored = described.get("properties", {}).get(PROJECTION_PROPERTY)
            stored_dimensions = next(field["params"]["dim"] for field in described["fields"] if field["name"] == "vector")
            existing = client.describe_index(name, "vector", timeout=CALL_TIMEOUT)
        if dimensions == "auto":
            dimensions = (None if stored == "full" else stored_dimensions) if exists else MILVUS_PCA_DIMENSIONS
        mean, components, projection = _projection(index, paths, dimensions)
        if exists and (stored != projection or index_type not in ("auto", existing["index_type"])):
            warnings.warn(f"Milvus collection {name} at {uri} holds vectors of another projection or index "
                          f"({stored}, {existing['index_type']}); it is rebuilt.", FeatureCacheWarning, stacklevel=3)
            client.drop_collection(name, timeout=CALL_TIMEOUT)
            exists = False
        if not exists:
            for path in (paths["state.npz"], paths["journal"]):
                path.unlink(missing_ok=True)
            wanted = index_type if index_type != "auto" else "FLAT" if len(index) < APPROXIMATE_SEARCH_MIN_PRODUCTS else "IVF_FLAT"
            _create_collection(client, name, len(components) if components is not None else index.vectors.shape[1],
                               wanted, ivf_lists(min(len(index), SEGMENT_PRODUCTS)) if wanted == "IVF_FLAT" else 0, projection)
            existing = client.describe_index(name, "vector", timeout=CALL_TIMEOUT)
        lists = client.describe_collection(name, timeout=CALL_TIMEOUT).get("properties", {}).get(LISTS_PROPERTY)
        client.load_collection(name, timeout=CALL_TIMEOUT)
    lists = int(lists or existing.get("nlist") or 0) if existing["index_type"] == "IVF_FLAT" else 0
    return MilvusBackend(uri, name, client, mean, components, lists), paths


def sync_milvus(index: Index, uri: str | None = None, *, dimensions: int | None | str = "auto",
                index_type: str = "auto", collection: str | None = None, state_dir=None, batch_size: int = SYNC_BATCH,
                on_batch: Callable[[int, int], None] | None = None, timeout: float = MILVUS_TIMEOUT) -> SyncReport:
    """Make the Milvus collection hold exactly `index`'s products, then search `index` through it.

    Args:
        index: the searchable catalogue (load_index or build_index).
        uri: a Milvus server (http(s)://host:19530) or a Milvus Lite file (….db); default: the
            index's milvus_uri, else the milvus_uri setting (FASHION_LENS_MILVUS_URI).
        dimensions: PCA dimensions stored per product (None: the full descriptors, exact candidates);
            "auto": an existing collection's, else MILVUS_PCA_DIMENSIONS (256).
        index_type: "FLAT" (exact over the stored vectors), "IVF_FLAT", or "auto": an existing
            collection's, else FLAT below APPROXIMATE_SEARCH_MIN_PRODUCTS products and IVF_FLAT
            (about 4 sqrt(N) lists, N up to a segment) above. Another projection or index type rebuilds it.
        collection: the collection's name (default collection_name(index)).
        state_dir: where the sync state is kept (default: artifacts/milvus).
        batch_size: products per upsert or delete call, each recorded when done.
        on_batch: called as on_batch(done, total) after each batch (a progress bar).
        timeout: seconds to connect before an unreachable server is reported (SearchBackendError).

    Returns:
        SyncReport: how many products were added, changed and removed (all 0 when nothing changed).

    >>> print(sync_milvus(index, "artifacts/milvus/catalogue.db"))  # doctest: +SKIP
    Milvus sync: 2906 added, 0 changed, 0 removed (0 unchanged, 9.1 s)
    """
    uri = check_milvus_uri(uri or index.milvus_uri or get_settings().milvus_uri)
    if uri is None:
        raise SettingsError(f"No Milvus to sync with: set {ENVIRONMENT_VARIABLES['milvus_uri']} or give uri=.")
    if index.metric != "cosine":
        raise SearchError("Only cosine recipes search through Milvus; the article's Euclidean recipe searches in-process.")
    with _SYNC_LOCK:
        started = time.perf_counter()
        backend, paths = open_collection(index, uri, dimensions=dimensions, index_type=index_type,
                                         collection=collection, state_dir=state_dir, timeout=timeout)
        ids = index.catalog["ProductId"].tolist()
        wanted = dict(zip(ids, row_digests(index)))
        stored, known = _stored_digests(backend, paths)
        upserts = [row for row, product_id in enumerate(ids) if stored.get(product_id) != wanted[product_id]]
        added = sum(ids[row] not in stored for row in upserts)
        removed = [product_id for product_id in stored if product_id not in wanted]
        total, done, batches = len(upserts) + len(removed), 0, 0
        for start in range(0, len(upserts), batch_size):
            rows = upserts[start:start + batch_size]
            with _milvus_calls(uri, "upserting products"):
                backend.client.upsert(backend.collection, _records(index, backend, rows, wanted), timeout=CALL_TIMEOUT)
            _record_batch(paths, {ids[row]: wanted[ids[row]] for row in rows}, [])
            done, batches = done + len(rows), batches + 1
            if on_batch is not None:
                on_batch(done, total)
        for start in range(0, len(removed), batch_size):
            gone = removed[start:start + batch_size]
            with _milvus_calls(uri, "deleting products"):
                backend.client.delete(backend.collection, ids=gone, timeout=CALL_TIMEOUT)
            _record_batch(paths, {}, gone)
            done, batches = done + len(gone), batches + 1
            if on_batch is not None:
                on_batch(done, total)
        if batches:
            with _milvus_calls(uri, "flushing"):  # seals the new rows into indexed segments
                backend.client.flush(backend.collection, timeout=CALL_TIMEOUT)
        if batches or not known:
            _save_state(paths, wanted)
        backend.last_sync = SyncReport(added, len(upserts) - added, len(removed), len(ids) - len(upserts), batches,
                                       time.perf_counter() - started)
        index.milvus, index.milvus_uri = backend, uri
    return backend.last_sync


def _records(index: Index, backend: MilvusBackend, rows: list[int], digests: dict[str, str]) -> list[dict]:
    vectors = backend.project(index.vectors[rows])
    catalog = index.catalog.iloc[rows]
    return [{"product_id": product_id, "vector": vector, "gender": gender,
             **{FIELDS[column]: str(value) for column, value in zip(FILTER_COLUMNS, values)},
             "duplicate_group": str(group), "digest": digests[product_id]}
            for product_id, vector, gender, group, *values in zip(
                catalog["ProductId"], vectors, catalog["Gender"], catalog["duplicate_group"],
                *(catalog[column] for column in FILTER_COLUMNS))]


# ---- search ---------------------------------------------------------------------------------------

def filter_expression(index: Index, rows: slice, filters: dict | None, excluded_ids=()) -> str:
    """The Milvus filter for a search over `rows` (a gender slice or all), the column `filters`
    (as SearchOptions.filters() gives them) and the products left out."""
    parts = []
    if (rows.start, rows.stop) != (0, len(index)):
        gender = next(name for name, part in index.gender_rows.items() if (part.start, part.stop) == (rows.start, rows.stop))
        parts.append(f"gender == {json.dumps(gender)}")
    for column, wanted in (filters or {}).items():
        if wanted is None or (not isinstance(wanted, str) and np.size(wanted) == 0):
            continue
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        parts.append(f"{FIELDS[column]} in [{', '.join(json.dumps(str(value)) for value in values)}]")
    if len(excluded_ids):
        parts.append(f"product_id not in [{', '.join(json.dumps(str(value)) for value in excluded_ids)}]")
    return " and ".join(parts)


def milvus_candidates(backend: MilvusBackend, query_vector: np.ndarray, count: int, expression: str = "",
                      probes: int = FAISS_PROBES) -> list[str]:
    """ProductIds of about the `count` stored vectors nearest the query's, best first, among those
    the filter `expression` allows. `probes`: the inverted lists an IVF_FLAT index visits."""
    params = {"metric_type": "L2"}
    if backend.lists:
        params["params"] = {"nprobe": int(min(max(probes, 1), backend.lists))}
    with _milvus_calls(backend.uri, "searching"):
        hits = backend.client.search(backend.collection, data=[backend.project(query_vector[None])[0]], anns_field="vector",
                                     limit=int(count), filter=expression, output_fields=["product_id"],
                                     search_params=params, timeout=CALL_TIMEOUT)
    backend.searches += 1
    return [hit["product_id"] for hit in hits[0]]


def rank_with_milvus(index: Index, query: Query, rows: slice, k: int, exclude: np.ndarray | None,
                     mask: np.ndarray | None, colour_weight: float, filters: dict | None) -> tuple[np.ndarray, dict]:
    """search.rank's results with candidates from Milvus: the same filters as a Milvus expression,
    then ann.rank_candidates, the ranking every approximate path ends with. `filters` are the
    column filters behind `mask` (pushed down to Milvus)."""
    if index.milvus is None:
        with _SYNC_LOCK:  # several app sessions may ask at once: sync once
            if index.milvus is None:
                sync_milvus(index)
    backend = index.milvus
    allowed = allowed_rows(rows, exclude, mask)
    available = int(allowed.sum())
    count = candidate_count(k, colour_weight)
    if available <= count:  # so few products allowed that Milvus could not save any work
        return rank_candidates(index, query, rows, k, allowed, np.flatnonzero(allowed), colour_weight)
    if mask is not None and filters is None:
        raise ValueError("rank_with_milvus needs the column filters behind `mask` to pass them to Milvus")
    ids = index.catalog["ProductId"].to_numpy()
    expression = filter_expression(index, rows, filters, [] if exclude is None else ids[rows.start + np.asarray(exclude)])
    seen = _allowed_positions(index, milvus_candidates(backend, query.vector, count, expression,
                                                       filtered_probes(len(index), available)), rows, allowed)
    if len(seen) < count and backend.lists:  # the visited lists held too few allowed products: visit them all
        seen = _allowed_positions(index, milvus_candidates(backend, query.vector, count, expression, backend.lists),
                                  rows, allowed)
    return rank_candidates(index, query, rows, k, allowed, seen, colour_weight)


def _allowed_positions(index: Index, product_ids: list[str], rows: slice, allowed: np.ndarray) -> np.ndarray:
    """Positions within `rows` of the proposed products this index holds and allows, in order."""
    positions = [index.positions[pid] - rows.start for pid in product_ids if pid in index.positions]
    positions = np.array([p for p in dict.fromkeys(positions) if 0 <= p < len(allowed) and allowed[p]], dtype=np.int64)
    return positions
