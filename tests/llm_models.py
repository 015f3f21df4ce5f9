"""The tiny Hugging Face causal LMs the tests build from configs (random weights, no hub):
the real layer layout of each family at a size a test runs in milliseconds."""

import torch

SIZES = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
    attn_implementation="eager",
)


def tiny_llm(family: str = "llama", dtype=torch.float32, seed: int = 0):
    """llama, qwen2 (q/k/v biases), qwen3 (q/k norms), mistral (sliding window), phi3 (fused
    qkv_proj and gate_up_proj)."""
    import transformers

    cfg = {
        "llama": lambda: transformers.LlamaConfig(**SIZES),
        "qwen2": lambda: transformers.Qwen2Config(**SIZES),
        "qwen3": lambda: transformers.Qwen3Config(head_dim=16, **SIZES),
        "mistral": lambda: transformers.MistralConfig(sliding_window=16, **SIZES),
        "phi3": lambda: transformers.Phi3Config(pad_token_id=0, **SIZES),
    }[family]()
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def convert(model, configs, fuse="auto"):
    """The model's layers in `configs` (one config, a tuple applied in order, or None): a
    Sparse24Config by sparsify_, the others by quantize_, as the LLM bench converts them."""
    import tersor

    for config in configs if isinstance(configs, tuple) else (configs,):
        if isinstance(config, tersor.Sparse24Config):
            tersor.sparsify_(model, config, progress=False)
        elif config is not None:
            tersor.quantize_(model, config, progress=False, fuse_projections=fuse)


def decode_logits(model, prompt, steps=6):
    """Logits of a prefill then `steps` greedy decode steps (the cache HF makes; its argument
    is `cache` from transformers 5.x, `past_key_values` before)."""
    import inspect

    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(prompt, use_cache=True)
        logits = [out.logits]
        for _ in range(steps):
            cache = getattr(out, arg, None) or out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            out = model(tok, use_cache=True, **{arg: cache})
            logits.append(out.logits)
    return logits
