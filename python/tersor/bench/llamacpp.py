"""llama.cpp on the very model tersor runs: the Hugging Face Llama's random weights written to a
GGUF file with the ``gguf`` package, quantized by llama.cpp itself (Q8_0, Q4_0, default
mixtures: llama.cpp keeps the tied embedding / output matrix at higher precision), timed through
``llama-cpp-python`` with the same prompt, greedy decode and thread count.

Written from the GGUF documentation (tensor names, llama.* keys): q_proj / k_proj rows are
permuted from Hugging Face's rotate-half rotary layout to llama.cpp's interleaved pairs, as
llama.cpp's own converter does, so llama.cpp's F16 logits match HF fp32 (checked before timing).
The vocabulary is a placeholder (the model has random weights; token ids are fed directly).
Not in CI: llama-cpp-python is a ~12-minute source build.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch


def unavailable() -> str | None:
    """None when llama-cpp-python and gguf import here, else why not."""
    import importlib.util

    if all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "gguf")):
        return None
    return "llama-cpp-python + gguf are not installed (a ~12-minute source build; never in CI)"


def _permute_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rows [head][half][i] -> llama.cpp rows [head][i][half] (rotate-half -> pairs)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
    )


def write_gguf(model, path: str) -> None:
    """An F16 GGUF of a transformers LlamaForCausalLM (tied embeddings)."""
    import gguf

    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tersor-bench-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(getattr(cfg, "rope_theta", None) or 10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # placeholder SentencePiece vocabulary: unk, bos, eos, the 256 byte tokens, then fillers
    n = cfg.vocab_size
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(len(tokens), n)]
    types = [2, 3, 3] + [6] * 256 + [1] * (n - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def f16(t):
        return t.detach().to(torch.float16).numpy()

    def f32(t):
        return t.detach().to(torch.float32).numpy()

    m = model.model
    w.add_tensor("token_embd.weight", f16(m.embed_tokens.weight))
    for i, layer in enumerate(m.layers):
        a, mlp = layer.self_attn, layer.mlp
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", f32(layer.input_layernorm.weight))
        w.add_tensor(p + "attn_q.weight", f16(_permute_rotary(a.q_proj.weight, heads)))
        w.add_tensor(p + "attn_k.weight", f16(_permute_rotary(a.k_proj.weight, kv)))
        w.add_tensor(p + "attn_v.weight", f16(a.v_proj.weight))
        w.add_tensor(p + "attn_output.weight", f16(a.o_proj.weight))
        w.add_tensor(p + "ffn_norm.weight", f32(layer.post_attention_layernorm.weight))
        w.add_tensor(p + "ffn_gate.weight", f16(mlp.gate_proj.weight))
        w.add_tensor(p + "ffn_up.weight", f16(mlp.up_proj.weight))
        w.add_tensor(p + "ffn_down.weight", f16(mlp.down_proj.weight))
    w.add_tensor("output_norm.weight", f32(m.norm.weight))
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", f16(model.lm_head.weight))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: str, dst: str, ftype: str, threads: int) -> None:
    """llama.cpp's own quantizer (its default mixture for the file type)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype}")


def load(path: str, threads: int, n_ctx: int):
    from llama_cpp import Llama

    return Llama(
        path, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def _logits(llm) -> np.ndarray:
    """The last evaluated token's logits (llama-cpp-python keeps them only in the context
    unless logits_all, which would copy every row)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def last_logits(llm, ids: list) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return _logits(llm).copy()


def time_generation(llm, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Prefill ms (eval of the prompt) and greedy decode tokens/s."""
    ids = prompt[0].tolist()
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        tok = int(np.argmax(_logits(llm)))
        llm.eval([tok])
    per_token = (time.perf_counter() - t0) / max(new_tokens - 1, 1)
    return dict(prefill_ms=prefill * 1e3, decode_tok_s=1.0 / per_token, s_per_token=per_token)


def prepare(model, prompt: torch.Tensor, new_tokens: int, workdir: str, check_ids):
    """[(row, loaded Llama)] for llama.cpp Q8_0 and Q4_0 on `model`'s weights (the files are
    mapped into memory, so `workdir` may go once they are loaded); F16 checked against HF."""
    threads = torch.get_num_threads()
    n_ctx = prompt.shape[1] + new_tokens + 8
    f16 = os.path.join(workdir, "model-f16.gguf")
    write_gguf(model, f16)
    with torch.inference_mode():
        ref = model(check_ids).logits[0, -1].float().numpy()
    llm = load(f16, threads, n_ctx)
    got = last_logits(llm, check_ids[0].tolist())
    del llm
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    if not err < 0.05:
        raise SystemExit(f"llama.cpp F16 logits are {err:.3g} off HF fp32: the GGUF is wrong")
    out = []
    for ftype in ("Q8_0", "Q4_0"):
        path = os.path.join(workdir, f"model-{ftype}.gguf")
        quantize(f16, path, ftype, threads)
        llm = load(path, threads, n_ctx)
        last_logits(llm, prompt[0, :8].tolist())  # warm-up
        row = dict(impl=f"llama.cpp {ftype}", kind="baseline", bytes=os.path.getsize(path))
        out.append((row, llm))
    os.remove(f16)
    return out
