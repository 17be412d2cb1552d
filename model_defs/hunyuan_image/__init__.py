"""HunyuanImage 2.1: the diffusion transformer (transformer.py) and the family's other pieces."""
