"""Text encoders: Qwen2.5-VL (transformers, its big layers swapped for the host's `operations`) and ByT5 (our own
T5 encoder, built from `operations`), with the record the loaders read for each kind (base.py)."""
