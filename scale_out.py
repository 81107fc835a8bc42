"""Extract the catalogue's features on a Ray cluster, into the same cache the notebooks and the app read.

    python scale_out.py --workers 2                          # a local Ray instance with 2 workers
    python scale_out.py --workers 64 --address HOST:6379     # an existing cluster (or set RAY_ADDRESS)
    python scale_out.py --workers 2 --sample 300             # the first 300 products only

Needs the optional extra: `pip install -r requirements-scale.txt` (the core project does not need Ray).

What runs where:
- the driver (this process) reads the catalogue, asks the feature cache which photos it lacks
  (new products, changed photos) and sends only those out, as a Ray Data table of
  (ProductId, image_path, image_sha256);
- each worker is a Ray actor holding one copy of the backbone; it decodes its batch of photos and
  runs the network with the very functions of the single-process path (prepare_photo,
  run_network), so the descriptors are the same numbers;
- the driver receives the descriptors as they stream back and writes them as shards of the usual
  cache (write_feature_shard: atomic file, then the manifest under a lock). Only the
  driver's machine needs the artifacts folder; workers need the photos and the weights.

A worker process that dies (out of memory, lost node) is restarted by Ray Data and its block of
photos is sent again (Ray Data's defaults for actor pools: max_restarts=-1, max_task_retries=-1).
A run that is stopped keeps the shards already written; the next run sends out only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

import fashion_lens
from fashion_lens.catalog import load_catalog
from fashion_lens.colour import colour_descriptor
from fashion_lens.errors import CatalogError, SettingsError, WeightsError
from fashion_lens.feature_cache import feature_cache_dir, prepare_photo, uncached_positions, write_feature_shard
from fashion_lens.features import FeatureRecipe, default_recipe, import_keras, resolve_recipe, run_network
from fashion_lens.settings import BACKBONES, RANDOM_WEIGHTS, get_settings
from fashion_lens.storage import writable_dir

COLUMNS = ["ProductId", "image_path", "image_sha256"]
# Rows per Ray block: the unit a lost worker redoes. A few batches keep the scheduling overhead
# small next to the network's time while a failure costs seconds, not minutes.
BATCHES_PER_BLOCK = 4
INSTALL_HINT = "Install the optional extra: pip install -r requirements-scale.txt"


class ScaleOutError(RuntimeError):
    """The distributed run cannot start or finish (Ray missing, cluster unreachable, bad arguments)."""


@dataclasses.dataclass
class ScaleOutReport:
    """What one run did: how many photos were asked for, sent out and stored, and how fast."""

    cache_dir: Path
    requested: int      # catalogue rows given
    dispatched: int     # rows sent to the workers (the cache lacked them)
    computed: int       # descriptors written to the cache
    failures: dict      # ProductId -> why its photo could not be read
    workers: int
    seconds: float      # wall time of the distributed part, Ray and model start-up included
    worker_seconds: float = 0.0      # time the workers spent on photos (decoding and network), summed
    worker_cpu_seconds: float = 0.0  # CPU time of those workers on photos: what a worker with a free core needs

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    @property
    def images_per_worker_second(self) -> float:
        """Throughput of one worker once started: the number to size a cluster with."""
        return self.computed / self.worker_seconds if self.worker_seconds else 0.0

    def __str__(self) -> str:
        if not self.dispatched:
            return f"All {self.requested} products already have features in {self.cache_dir}; nothing sent out."
        text = (f"{self.computed} of {self.dispatched} photos computed by {self.workers} worker(s) in "
                f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s, start-up included; "
                f"{self.images_per_worker_second:.1f} images/s per busy worker, "
                f"{self.worker_cpu_seconds / max(self.computed, 1) * 1000:.0f} ms of CPU per image); "
                f"{self.requested - self.dispatched} were already cached. Cache: {self.cache_dir}")
        return f"{text}\n{self.failure_summary()}" if self.failures else text

    def failure_summary(self) -> str:
        examples = "; ".join(f"{pid}: {reason}" for pid, reason in list(self.failures.items())[:5])
        return f"{len(self.failures)} photo(s) could not be read and are left out ({examples})."


class PhotoEncoder:
    """One Ray actor's work: holds the backbone once and turns batches of photo paths into descriptors.

    Every output row keeps its input row: a photo that cannot be read gets zeros and its reason in
    `error`, so the driver can report it (Ray Data batches must keep equal-length columns).
    """

    def __init__(self, recipe: FeatureRecipe, weights: str, threads: int, fault_drill: str | None = None):
        import_keras()  # TensorFlow set up as in the engine
        import tensorflow as tf

        # One worker per CPU slot: TensorFlow would otherwise start a thread per core in every actor.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        # Resolve the weights here too: the worker must hold the very file the driver's cache is keyed by.
        local = resolve_recipe(dataclasses.replace(recipe, weights=weights, weights_id=None))
        if local.weights_id != recipe.weights_id:
            raise WeightsError(
                f"This worker's {recipe.backbone} weights ({local.weights_id}) differ from the driver's ({recipe.weights_id}). "
                "Give every node the same weights file (same Keras cache or the same path in FASHION_LENS_WEIGHTS)."
            )
        self.recipe = recipe
        blank = np.full((1, recipe.image_size, recipe.image_size, 3), 255, dtype=np.uint8)
        self.vector_size = run_network(blank, recipe).shape[1]  # loads the model once, before any batch
        self.colour_size = colour_descriptor(Image.new("RGB", (8, 8), "white")).shape[0]
        self.fault_drill = fault_drill
        self.batches_done = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fault_drill and self.batches_done == 1:  # part-way: after this worker's first batch
            _crash_once(self.fault_drill)
        self.batches_done += 1
        started, cpu_started = time.perf_counter(), time.process_time()
        count = len(batch["ProductId"])
        vectors = np.zeros((count, self.vector_size), dtype=self.recipe.dtype)
        colours = np.zeros((count, self.colour_size), dtype=np.float32)
        errors = np.full(count, "", dtype=object)
        pixels, good = [], []
        for row, path in enumerate(batch["image_path"]):
            prepared, error = prepare_photo(str(path), self.recipe)
            if error:
                errors[row] = error
            else:
                pixels.append(prepared[0])
                colours[row] = prepared[1]
                good.append(row)
        if pixels:
            vectors[good] = run_network(np.stack(pixels), self.recipe)
        # per-row shares of the batch's time, so the driver can add them up whatever the batching
        seconds = np.full(count, (time.perf_counter() - started) / count)
        cpu_seconds = np.full(count, (time.process_time() - cpu_started) / count)
        return {"ProductId": batch["ProductId"], "image_sha256": batch["image_sha256"], "vectors": vectors,
                "colours": colours, "error": errors, "seconds": seconds, "cpu_seconds": cpu_seconds}


def _crash_once(marker: str) -> None:
    """Fault drill: the first worker to get here ends its process abruptly, as a lost node would;
    the marker file it leaves stops the restarted worker (and any other) from doing it again."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def extract_features_on_ray(catalog: pd.DataFrame, recipe: FeatureRecipe | None = None, *,
                            workers: int = 2, address: str | None = None, artifacts_dir=None,
                            batch_size: int = 32, shard_size: int = 512, cpus_per_worker: int = 1,
                            progress: bool = True, fault_drill: str | os.PathLike | None = None) -> ScaleOutReport:
    """Compute the descriptors the cache lacks for `catalog` on Ray, and store them in the usual cache.

    `catalog` is load_catalog()'s table (ProductId, image_path, image_sha256 are used). Ray is reached
    at `address` (else $RAY_ADDRESS); with neither, a local instance with workers x cpus_per_worker
    CPUs is started and stopped again. Ray already running in this process (connect_ray() in a
    notebook, say) is used as it is. Afterwards extract_features / load_index read the
    features without computing any.
    `fault_drill` (a file path) makes the first worker to start its second batch crash once, to
    rehearse the loss of a worker.

    >>> report = extract_features_on_ray(load_catalog(), workers=2)  # doctest: +SKIP
    """
    _check_arguments(catalog, workers, batch_size, shard_size, cpus_per_worker)
    recipe = resolve_recipe((recipe or default_recipe()).check())
    if recipe.weights == RANDOM_WEIGHTS:
        raise ScaleOutError("weights='random' draws different weights in every worker; use 'imagenet' or a weights file.")
    cache_dir = writable_dir(feature_cache_dir(recipe, artifacts_dir))
    todo = catalog.iloc[uncached_positions(catalog, cache_dir, recipe)][COLUMNS]
    report = ScaleOutReport(cache_dir=cache_dir, requested=len(catalog), dispatched=len(todo), computed=0,
                            failures={}, workers=workers, seconds=0.0)
    if todo.empty:
        return report

    ray = _import_ray()
    started = time.perf_counter()
    we_started_ray = connect_ray(address, cpus=workers * cpus_per_worker)
    context = ray.data.DataContext.get_current()
    progress_bars, context.enable_progress_bars = context.enable_progress_bars, progress
    try:
        rows = todo.astype(str).reset_index(drop=True)
        block_rows = min(batch_size * BATCHES_PER_BLOCK, -(-len(rows) // workers))  # every worker gets work
        table = ray.data.from_pandas([rows.iloc[start:start + block_rows] for start in range(0, len(rows), block_rows)])
        descriptors = table.map_batches(
            PhotoEncoder,
            fn_constructor_kwargs={"recipe": recipe, "weights": recipe.weights,
                                   "threads": cpus_per_worker,
                                   "fault_drill": str(fault_drill) if fault_drill else None},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
        )
        # The driver writes the shards as results stream back: one writer, and the workers need no
        # access to the artifacts folder (a cluster rarely shares a lockable disk with the driver).
        stored = tqdm(total=len(rows), desc="photos stored", unit="img", disable=not progress)
        for batch in descriptors.iter_batches(batch_size=shard_size, batch_format="numpy"):
            ok = batch["error"] == ""
            report.worker_seconds += float(batch["seconds"].sum())
            report.worker_cpu_seconds += float(batch["cpu_seconds"].sum())
            report.failures.update(zip(batch["ProductId"][~ok].astype(str), batch["error"][~ok].astype(str)))
            if ok.any():
                write_feature_shard(
                    cache_dir, recipe, batch["ProductId"][ok].astype(str), batch["image_sha256"][ok].astype(str),
                    np.asarray(batch["vectors"][ok]), np.asarray(batch["colours"][ok], dtype=np.float32))
                report.computed += int(ok.sum())
            stored.update(len(ok))
        stored.close()
    except ray.exceptions.RayError as error:
        raise ScaleOutError(
            f"The Ray run failed after {report.computed} of {len(todo)} photos were stored ({_what_went_wrong(error)}). "
            "Fix the cause and run again: the stored shards are kept and only the rest is sent out."
        ) from error
    finally:
        report.seconds = time.perf_counter() - started
        context.enable_progress_bars = progress_bars
        if we_started_ray:
            ray.shutdown()
    if report.failures:
        warnings.warn(report.failure_summary(), stacklevel=2)
    return report


def _check_arguments(catalog, workers, batch_size, shard_size, cpus_per_worker) -> None:
    missing = [column for column in COLUMNS if column not in getattr(catalog, "columns", [])]
    if missing:
        raise ScaleOutError(f"The catalogue lacks the column(s) {', '.join(missing)}; pass load_catalog()'s table.")
    for name, value in {"workers": workers, "batch_size": batch_size, "shard_size": shard_size,
                        "cpus_per_worker": cpus_per_worker}.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ScaleOutError(f"{name} must be a whole number of at least 1, not {value!r}.")


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ScaleOutError(f"Ray is not installed ({error}). {INSTALL_HINT}") from error
    return ray


def connect_ray(address: str | None = None, cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` (else $RAY_ADDRESS), or start a local instance with `cpus` CPUs.

    The workers get this checkout's package fashion_lens and scale_out.py (their descriptors must come from
    the same code as the driver's) and the driver's KERAS_HOME, where the weights are kept. Does
    nothing when Ray is already running in this process. True when this call started Ray.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = {"runtime_env": _worker_environment(), "logging_level": logging.WARNING}
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **options)
        else:
            _start_local_ray(ray, cpus, options)
    except ScaleOutError:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise ScaleOutError(
            f"Cannot reach the Ray cluster at {address} ({_what_went_wrong(error)}). Check the address "
            "(HOST:6379 or ray://HOST:10001), start one with `ray start --head`, or leave --address "
            "and RAY_ADDRESS unset to run on a local Ray instance."
        ) from error
    return True


LOCAL_START_ATTEMPTS = 3


def _start_local_ray(ray, cpus: int | None, options: dict) -> None:
    # Ray gives its own processes a fixed 30 s to register; on a busy machine they can miss it
    # and a second start succeeds, so a local start is tried a few times before giving up.
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            # sized for the workers asked for, so they do not fight over the same cores
            ray.init(num_cpus=cpus, include_dashboard=False, **options)
            return
        except Exception as error:  # Ray raises a bare Exception for a start-up timeout
            if "timed out during startup" not in str(error):
                raise
            ray.shutdown()
            if attempt == LOCAL_START_ATTEMPTS:
                raise ScaleOutError(
                    f"The local Ray instance did not start ({error}) after {attempt} attempt(s). "
                    "The machine may be overloaded: close other heavy programs and run again."
                ) from error


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    # ray.init retries an unreachable address for about 15 minutes: ask the port first
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if host and port.isdigit():  # "auto" and the like are left to Ray
        socket.create_connection((host, int(port)), timeout=timeout).close()


def _worker_environment() -> dict:
    variables = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    if os.environ.get("KERAS_HOME"):
        variables["KERAS_HOME"] = os.environ["KERAS_HOME"]
    return {"py_modules": [str(Path(fashion_lens.__file__).parent), str(Path(__file__).resolve())], "env_vars": variables}


def _what_went_wrong(error: BaseException) -> str:
    """The line of an error that says what went wrong: a worker's error arrives with its traceback
    (last "SomethingError: ..." line), a local one is its first line."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:500].rstrip(".")


# ============================================================================
# Command line
# ============================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compute the catalogue's missing feature vectors on a Ray cluster (or a local Ray instance).",
    )
    parser.add_argument("--workers", type=int, default=2, help="model-holding Ray actors (default: %(default)s)")
    parser.add_argument("--address", help="Ray cluster address, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, else a local instance)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and TensorFlow threads) per worker (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="photos per network call (default: %(default)s)")
    parser.add_argument("--sample", type=int, help="only the first N products of the catalogue")
    parser.add_argument("--data-dir", help="catalogue folder (default: $FASHION_LENS_DATA or data/fashion)")
    parser.add_argument("--artifacts-dir", help="where the feature cache goes (default: $FASHION_LENS_ARTIFACTS or artifacts)")
    parser.add_argument("--backbone", choices=BACKBONES, help="default: $FASHION_LENS_BACKBONE or resnet50")
    parser.add_argument("--weights", help="'imagenet' or a Keras weights file (default: $FASHION_LENS_WEIGHTS or imagenet)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--fault-drill", metavar="FILE", help="rehearse a lost worker: one worker crashes once, part-way (FILE marks that it did)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for option in ("workers", "cpus_per_worker", "batch_size", "sample"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            build_parser().error(f"--{option.replace('_', '-')} must be at least 1")
    try:
        settings = get_settings(args.data_dir, args.artifacts_dir, args.backbone, args.weights)
        catalog = load_catalog(settings.data_dir)
        if args.sample:
            catalog = catalog.head(args.sample)
        report = extract_features_on_ray(
            catalog, default_recipe(settings), workers=args.workers, address=args.address,
            artifacts_dir=settings.artifacts_dir, batch_size=args.batch_size, cpus_per_worker=args.cpus_per_worker,
            progress=not args.no_progress, fault_drill=args.fault_drill,
        )
    except (ScaleOutError, SettingsError, CatalogError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the shards already written are kept: run the same command to go on.", file=sys.stderr)
        return 130
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
