"""Hidden states of training samples: the file format, the cache and its policies, generators.

Modules, lowest first (each imports only those above it):
``files`` (the hs file format, its one reader and writer, the error types),
``layers`` (the layer-id record beside a cache), ``accounting`` (what happened to each
sample), ``cache`` (the cache source and the on-missing/on-generate policies),
``legacy`` (deprecated ``data_{i}.pt`` files), ``factory`` (the source a run configuration
asks for). The generators (:mod:`spectool.data.local_generator`,
:mod:`spectool.data.vllm_client`) import ``files`` only; ``factory`` imports them.
"""
