"""Retrieval datastore (Re-AudioLDM): CLAP audio + text embeddings of a corpus in FAISS indexes.

Light to import: FAISS loads inside the functions. `tta index build|query|info` drives it from the shell.

    from tta.retrieval import Datastore, DatastoreConfig, build_datastore
    build_datastore("data/manifest.jsonl", clap, "stores/audiocaps", DatastoreConfig(index="ivf"))
    store = Datastore.load("stores/audiocaps")
    hits = store.query_text(clap, ["a dog barks"], k=5)     # hits.ids, hits.scores (B, k), hits.captions
"""

__all__ = ["Datastore", "DatastoreConfig", "DatastoreError", "Neighbours", "build_datastore"]


def __getattr__(name: str):
    # lazy: `tta --help` imports tta.retrieval.commands, which must not pull in numpy through this package
    if name in __all__:
        from tta.retrieval import datastore

        return getattr(datastore, name)
    raise AttributeError(f"module 'tta.retrieval' has no attribute {name!r}")
