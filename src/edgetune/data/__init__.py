"""Data: bundled data sets by name, user files, tokenization for each task, batching."""
