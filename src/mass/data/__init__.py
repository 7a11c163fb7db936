"""Data builders and loaders: corpora, tokenizer, binarized datasets."""
