"""Model file formats read as they are stored: safetensors, sharded safetensors, GGUF and PyTorch pickles.

Each module checks its format's structure before any tensor is touched and refuses a damaged file with a
ModelFileError naming it. Nothing here knows about quantization scales (loaders/quant/fp8.py folds those in,
loaders/checkpoints.py puts the two together).
"""
