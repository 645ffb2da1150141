"""Chat data -> processed dataset.

``read`` (chat files: JSONL/JSON, ShareGPT and OpenAI turns, one-line errors naming
file:line), ``mask`` (the verifier's chat template and the loss mask by prefix
rendering), ``output`` (the output directory: refuse to replace a dataset unless asked),
``prepare`` (the whole of ``spectool data prepare``). Nothing here imports typer or rich.
"""
