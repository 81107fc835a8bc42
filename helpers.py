"""fashion-lens for the notebooks: the few names a chapter needs, in the order the data flows.

    import helpers as h
    catalog = h.load_catalog()                      # fashion.csv + photos, checked
    index = h.load_index(catalog)                   # descriptors (cached) -> searchable index
    h.similar_products(index, "13683", k=5)         # the most similar products
    h.show_products(results, query=...)             # as photos
    h.evaluate(index)                               # precision@k, mAP@k

The engine itself is the package `fashion_lens/`, one module per stage (see its __init__);
this file only re-exports the public names, each documented where it is defined.
"""

from fashion_lens.catalog import (
    GENDER_FOLDERS,
    GENDERS,
    METADATA_COLUMNS,
    duplicate_groups,
    grayscale_products,
    load_catalog,
    metadata_conflicts,
    product_row,
    sample_catalog,
    save_gender_splits,
    split_by_gender,
)
from fashion_lens.display import (
    category_heatmap,
    confusion_heatmap,
    count_plot,
    embedding_map,
    interactive_count_plot,
    metric_curves,
    precision_chart,
    setup_notebook,
    show_geometries,
    show_products,
    show_ranked_queries,
    show_samples,
    show_similarity_maps,
    show_source,
)
from fashion_lens.evaluation import (
    FAILURE_REASONS,
    RELEVANCE,
    choose_colour_weight,
    compare_methods,
    confusion_table,
    evaluate,
    evaluate_uploads,
    failure_reasons,
    heldout_index,
    query_halves,
    rank_all,
    relevance_matrix,
)
from fashion_lens.explain import similarity_map, similarity_maps
from fashion_lens.feature_cache import extract_features, extract_recipes
from fashion_lens.features import (
    GEOMETRIES,
    METRICS,
    POOLINGS,
    PREPROCESSINGS,
    FeatureRecipe,
    default_recipe,
    load_backbone,
    one_change_path,
    preprocess_batch,
    reference_recipe,
)
from fashion_lens.images import load_image, to_square
from fashion_lens.index import DEFAULT_COLOUR_WEIGHT, build_index, load_index
from fashion_lens.milvus_search import sync_milvus
from fashion_lens.probes import ATTRIBUTE_MIN_PRODUCTS, probe_accuracy, probe_guesses
from fashion_lens.search import SearchOptions, search_backend, similar_products, similar_to_image
from fashion_lens.settings import RANDOM_WEIGHTS, get_settings
from fashion_lens.tuning import TuningConfig, serving_recipe, split_by_group, tune_network
from fashion_lens.widget import recommender_widget

__all__ = [
    # settings and the catalogue
    "get_settings", "RANDOM_WEIGHTS", "setup_notebook",
    "load_catalog", "sample_catalog", "split_by_gender", "save_gender_splits", "product_row",
    "duplicate_groups", "metadata_conflicts", "grayscale_products",
    "GENDERS", "GENDER_FOLDERS", "METADATA_COLUMNS",
    # photos and features
    "load_image", "to_square", "load_backbone", "preprocess_batch", "FeatureRecipe", "default_recipe", "reference_recipe",
    "extract_features", "extract_recipes", "one_change_path",
    "GEOMETRIES", "PREPROCESSINGS", "POOLINGS", "METRICS",
    # index and search
    "build_index", "load_index", "similar_products", "similar_to_image", "SearchOptions",
    "sync_milvus", "search_backend", "DEFAULT_COLOUR_WEIGHT", "probe_accuracy", "probe_guesses", "ATTRIBUTE_MIN_PRODUCTS",
    # evaluation
    "evaluate", "compare_methods", "rank_all", "relevance_matrix", "RELEVANCE", "query_halves",
    # teaching the network the catalogue, measured on held-out photos
    "split_by_group", "tune_network", "TuningConfig", "serving_recipe", "heldout_index", "evaluate_uploads", "choose_colour_weight",
    # display and the widget
    "show_products", "show_samples", "show_geometries", "count_plot", "interactive_count_plot",
    "category_heatmap", "embedding_map", "precision_chart", "metric_curves", "show_ranked_queries", "show_source",
    "recommender_widget",
    # why the worst queries fail, and what the network looks at
    "failure_reasons", "FAILURE_REASONS", "confusion_table", "confusion_heatmap", "similarity_map", "similarity_maps",
    "show_similarity_maps",
]
