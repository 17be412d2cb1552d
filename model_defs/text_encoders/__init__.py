"""Text encoders (transformers models, with their big layers swapped for the host's `operations`)."""
