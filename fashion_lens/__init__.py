"""fashion-lens: a visual-similarity recommender for a fashion catalogue.

One module per stage, in the order the data flows; each imports only the stages before it:

    errors -> settings -> storage -> images -> colour -> catalog_layout -> catalog -> features -> feature_cache
    -> tuning -> probes -> index -> ann -> milvus_search -> search -> evaluation -> display -> widget

Importing the package loads neither TensorFlow, FAISS nor pymilvus: the functions that need them import
them when called. The notebooks use the short front door `helpers.py` at the project's root.
"""

STAGES = ("errors", "settings", "storage", "images", "colour", "catalog_layout", "catalog", "features", "feature_cache",
          "tuning", "probes", "index", "ann", "milvus_search", "search", "evaluation", "explain", "display", "widget")
