"""Named model-layer shapes (K = in_features, N = out_features) and batch sizes."""
LINEAR_SHAPES = {
    "llama7b.q_proj": (4096, 4096),
    "llama7b.up_proj": (4096, 11008),
    "llama7b.down_proj": (11008, 4096),
    "minilm.ffn_up": (384, 1536),
    "minilm.ffn_down": (1536, 384),
}
BATCHES = [1, 8, 32, 128, 512]
