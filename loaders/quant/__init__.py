"""Quantized weights (FP8 with scales, GGUF blocks): kept as stored, dequantized per layer at use."""
