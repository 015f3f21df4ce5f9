"""``python -m tersor.bench --family llm``: a Hugging Face Llama (built from a config, random
weights of the real shapes) in eager mode, fp32 against tersor schemes: prefill of a prompt and
greedy decode at batch 1, with weight bytes per token and the % of the memory floor (bytes per
token / measured read bandwidth, over the measured time per token: at the best probe of the
run, and at the probes beside each sample). The tersor rows are the
model after ``tersor.quantize_`` and ``tersor.optimize_decoding_`` (attention of the decode
steps on our kernel); the fp32 row is the model as HF runs it.

Peers on the same architecture (llama.cpp Q4_0 / Q8_0 through llama-cpp-python + gguf,
OpenVINO INT8 / INT4 through optimum-intel + NNCF, in this interpreter or in the one
TERSOR_BENCH_OPENVINO_PYTHON names: optimum-intel pins an older transformers) are listed
unavailable with the reason when they are not installed; llama-cpp-python is a ~12-minute
source build, never installed in CI.
"""

from __future__ import annotations

import contextlib
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import tersor
from tersor.bench.generation import time_generation, warm_up
from tersor.bench.timing import bandwidth_buffer, measure_bandwidth

SHAPES = {  # Llama-3.2-1B, and a tiny one CI runs
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
}
SCHEMES = {
    "tersor W8A8": lambda: tersor.W8A8Config(),
    # 7-bit weights: OpenVINO's grid on CPUs without VNNI, where it runs faster (configs.py)
    "tersor W7A8": lambda: tersor.W8A8Config(weight_bits=7),
    # int8 weights with fp32 activations (compressed-tensors W8A16 checkpoints)
    "tersor W8": lambda: tersor.W8Config(),
    "tersor W4A8 g32": lambda: tersor.W4A8Config(group_size=32),
    "tersor W4 g128": lambda: tersor.W4Config(group_size=128),
    # the same weights with 16-bit activations as two int8 planes (W4A16 imports with
    # activations="int16"): the int8 kernel, activations within amax / 64516
    "tersor W4 g128 a16": lambda: tersor.W4A8Config(group_size=128, act_bits=16),
    "tersor W4A8 g32 bf16": lambda: tersor.W4A8Config(group_size=32),
    # a bf16 model: its prefill takes the bf16 kernels (AMX-BF16 tiles / vdpbf16ps)
    "tersor W4 g128 bf16": lambda: tersor.W4Config(group_size=128),
    # the fp32 model under torch.set_float32_matmul_precision("medium"): its rows of 12 and
    # more take the same bf16 kernels (ops/gemm_w4.py bf16_allowed); HF's own fp32 ops too
    "tersor W4 g128 medium": lambda: tersor.W4Config(group_size=128),
    # 2:4 sparsity (magnitude-pruned here: a speed row; SparseGPT / distillation keep accuracy),
    # fp32 values and then int8 values (sparsify_, then quantize_ of the sparse layers)
    "tersor 2:4": lambda: tersor.Sparse24Config(),
    "tersor 2:4 W8A8": lambda: (tersor.Sparse24Config(), tersor.W8A8Config()),
}
# else the model stays fp32
MODEL_DTYPE = {"tersor W4A8 g32 bf16": torch.bfloat16, "tersor W4 g128 bf16": torch.bfloat16}
MATMUL_PRECISION = {"tersor W4 g128 medium": "medium"}  # else torch's, while timed


def _no_init():
    """transformers' context that skips weight initialization (torch's and its own), or a
    no-op where this transformers has none under either name."""
    try:
        from transformers.initialization import no_init_weights  # 5.x
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # 4.x
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def build(shape: str):
    """A LlamaForCausalLM of `shape` with random weights drawn as transformers draws them
    (normal, std initializer_range; the RMSNorm weights 1), seeded. Each tensor is drawn once,
    in chunks on two threads with a generator each: built as transformers builds it, the 1B
    shape took ~30 s on Zen 1, nn.Linear's own uniform init drawn and then overwritten."""
    import transformers

    cfg = transformers.LlamaConfig(max_position_embeddings=4096, **SHAPES[shape])
    with _no_init():
        model = transformers.LlamaForCausalLM(cfg)
    model.tie_weights()  # (skipped with the init: lm_head is the embedding again)
    chunks, ones = [], []
    with torch.no_grad():
        for p in model.parameters():  # the tied lm_head once
            if p.dim() < 2:
                ones.append(p)  # RMSNorm weights: Llama has no biases
            else:
                chunks += p.detach().view(-1).split(1 << 22)  # (grad mode is per thread)
        for p in ones:
            p.fill_(1.0)

        def draw(i: int) -> None:
            gen = torch.Generator().manual_seed(i)
            chunks[i].normal_(0.0, cfg.initializer_range, generator=gen)

        with ThreadPoolExecutor(2) as pool:  # normal_ runs on one thread
            list(pool.map(draw, range(len(chunks))))
    return model.eval()


def weight_bytes_per_token(model) -> int:
    """Bytes of every Linear-like weight a decode step reads (the embedding row is noise)."""
    from tersor.nn import PackedLinear

    total = 0
    for m in model.modules():
        if isinstance(m, PackedLinear):
            total += m.nbytes
        elif isinstance(m, torch.nn.Linear):
            total += sum(p.numel() * p.element_size() for p in (m.weight, m.bias) if p is not None)
    return total


def sharing_weights(base):
    """A second model of base's architecture whose parameters and buffers are base's own
    tensors (no copy; quantize_ reads the Linear weights and replaces the modules, leaving
    base's tensors as they were). Six scheme models built afresh each held a 5 GB fp32 copy
    while converting and kept their own 1 GB embedding: the bench ran a 24 GiB machine out of
    memory."""
    import transformers

    with torch.device("meta"):
        m = transformers.LlamaForCausalLM(base.config)
    m.load_state_dict(base.state_dict(), assign=True)
    for name, mod in base.named_modules():  # non-persistent buffers (rotary inv_freq) too
        m.get_submodule(name)._buffers.update(mod._buffers)
    return m.eval()


@contextlib.contextmanager
def dequantized(model):
    """model with every tersor layer running F.linear on its weight dequantized at each call
    (one layer's float weight at a time), restored on exit."""
    from tersor.nn import PackedLinear

    class Dequantized(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            w = self.layer.dequantized_weight().to(x.dtype)
            b = self.layer.bias
            return torch.nn.functional.linear(x, w, None if b is None else b.to(x.dtype))

    swapped = []
    for name, m in list(model.named_modules()):
        if isinstance(m, PackedLinear):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, Dequantized(m))
            swapped.append((owner, child, m))
    try:
        yield model
    finally:
        for owner, child, m in swapped:
            setattr(owner, child, m)


# llama.cpp's file type of the same bits as each scheme: the ratios the figures use
SAME_BITS = {
    "W8": ("llama.cpp Q8_0", "OpenVINO INT8"),
    "W7": ("llama.cpp Q8_0", "OpenVINO INT8"),
    "W4": ("llama.cpp Q4_0", "OpenVINO INT4"),
}


def run_llm(
    shape: str = "1b",
    prompt_len: int = 128,
    new_tokens: int = 64,
    bandwidth: float = 0.0,
    schemes=None,
    rounds: int = 3,
) -> list:
    """Rows for HF fp32, each tersor scheme (checked against its own weights dequantized
    first) and the peers that are installed, timed in `rounds` interleaved rounds (medians:
    the machine is shared); prints the table."""
    import statistics

    schemes = list(SCHEMES) if schemes is None else schemes
    model = build(shape)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=gen)
    with torch.inference_mode():
        ref = model(prompt[:, :16]).logits
    engines = {"HF fp32 eager": (model, time_generation)}
    rows = [dict(impl="HF fp32 eager", kind="baseline", bytes=weight_bytes_per_token(model))]
    peers, peer_engines = _peers(model, prompt, new_tokens)
    rows += [r for r in peers if "unavailable" not in r]
    engines.update(peer_engines)
    for name in schemes:
        m = sharing_weights(model).to(MODEL_DTYPE.get(name, torch.float32))
        configs = SCHEMES[name]()
        configs = configs if isinstance(configs, tuple) else (configs,)
        seconds = 0.0
        for config in configs:
            convert = tersor.sparsify_ if config.scheme == "2:4" else tersor.quantize_
            seconds += convert(m, config, progress=False).seconds
        if not tersor.optimize_decoding_(m).attention:
            raise SystemExit(f"{name}: no attention block took the decode kernel")
        with torch.inference_mode():
            out = m(prompt[:, :16]).logits.float()
            with dequantized(m):
                deq = m(prompt[:, :16]).logits.float()
        err = ((out - ref).norm() / ref.norm()).item()  # the quantization's own error (shown)
        kernel_err = ((out - deq).norm() / deq.norm()).item()
        # checked against the same weights in the model's dtype: weight-only schemes to float
        # rounding (a bf16 model's: 0.030 on the 1b shape, the same with the bf16 kernel off),
        # int8 activations to their quantization noise compounded over the layers
        bf16 = MODEL_DTYPE.get(name) == torch.bfloat16
        if not kernel_err < (0.35 if "a8" in config.scheme else 0.06 if bf16 else 1e-3):
            raise SystemExit(f"{name}: logits {kernel_err:.3g} off its dequantized weights")
        engines[name] = (
            m,
            functools.partial(time_generation, precision=MATMUL_PRECISION.get(name)),
        )
        rows.append(
            dict(
                impl=name,
                kind="ours",
                bytes=weight_bytes_per_token(m),
                convert_s=seconds,
                logit_err=err,
            )
        )
    for name, (m, _) in engines.items():
        if name in SCHEMES or name == "HF fp32 eager":
            warm_up(m, prompt)
    samples = {name: [] for name in engines}
    cuts = tersor._C.team_stats()["cuts"]
    # The host's read rate moves by 1.5x within a run (other tenants): besides the floor at
    # the best probe of the run, each sample is set against the probes taken just before and
    # after it (the faster of the two), the rate its own decode could have had.
    probes = [bandwidth] if bandwidth else []
    probe_buf = bandwidth_buffer() if bandwidth else None
    for _ in range(rounds):
        for name, (m, timer) in engines.items():
            samples[name].append(timer(m, prompt, new_tokens))
            if bandwidth:
                probes.append(measure_bandwidth(buf=probe_buf))
                samples[name][-1]["local_bw"] = max(probes[-2:])
    del probe_buf
    cuts = tersor._C.team_stats()["cuts"] - cuts
    if probes:  # the floor at the best read rate seen: a slow probe would flatter % of floor
        bandwidth = max(probes)
        print(
            f"read bandwidth per probe: {min(probes) / 1e9:.1f}-{bandwidth / 1e9:.1f} GB/s "
            f"({len(probes)} probes, one after each timed engine); % floor below at "
            f"{bandwidth / 1e9:.1f}, % local at the faster probe beside each sample"
        )
    for r in rows:
        got = samples[r["impl"]]
        for key in ("prefill_ms", "s_per_token"):
            r[key] = statistics.median(t[key] for t in got)
        r["decode_tok_s"] = 1.0 / r["s_per_token"]
        if bandwidth:
            r["local_pct"] = statistics.median(
                100 * (r["bytes"] / t["local_bw"]) / t["s_per_token"] for t in got
            )
    _print_llm(rows, peers, shape, prompt_len, new_tokens, rounds, bandwidth)
    if cuts:  # other work kept the cores busy (csrc/common/team_governor.h)
        print(f"busy cores: tersor's kernels gave up a thread {cuts} times while timed")
    return rows + [r for r in peers if "unavailable" in r]


def _print_llm(rows, peers, shape, prompt_len, new_tokens, rounds, bandwidth) -> None:
    base = rows[0]["decode_tok_s"]
    by_name = {r["impl"]: r for r in rows}
    print(
        f"Llama ({shape} shape, random weights), prompt {prompt_len}, {new_tokens} new tokens, "
        f"batch 1, {torch.get_num_threads()} threads, medians of {rounds} interleaved rounds"
    )
    print(
        f"{'engine':<24}{'MB/token':>10}{'prefill ms':>12}{'decode tok/s':>14}"
        f"{'vs fp32':>9}{'% floor':>9}{'% local':>9}"
    )
    for r in rows:
        floor = r["bytes"] / bandwidth if bandwidth else 0.0
        r["floor_pct"] = 100 * floor / r["s_per_token"] if bandwidth else None
        r["ratios"] = {}
        if r["kind"] == "ours":  # decode tok/s ratio, > 1: tersor is faster
            r["ratios"]["HF fp32 eager"] = r["decode_tok_s"] / base
            r["prefill_ratio"] = {}
            for name in SAME_BITS.get(r["impl"].split()[1][:2], ()):
                peer = by_name.get(name)
                if peer is not None:
                    r["ratios"][name] = r["decode_tok_s"] / peer["decode_tok_s"]
                    r["prefill_ratio"][name] = peer["prefill_ms"] / r["prefill_ms"]
        pct = f"{r['floor_pct']:8.0f}%{r['local_pct']:8.0f}%" if bandwidth else f"{'-':>18}"
        print(
            f"{r['impl']:<24}{r['bytes'] / 1e6:>10.0f}{r['prefill_ms']:>12.0f}"
            f"{r['decode_tok_s']:>14.1f}{r['decode_tok_s'] / base:>8.2f}x{pct}"
        )
    for r in peers:
        if "unavailable" in r:
            print(f"{r['impl']:<24}unavailable: {r['unavailable']}")
    for r in rows:
        for peer, v in r.get("prefill_ratio", {}).items():
            print(
                f"{r['impl']} vs {peer} (same bits): decode {r['ratios'][peer]:.2f}x, "
                f"prefill {v:.2f}x"
            )


def _peers(model, prompt, new_tokens):
    """llama.cpp and OpenVINO on the same float model: (rows, {name: (engine, timer)}), or rows
    saying why not."""
    import tempfile

    from tersor.bench import llamacpp, openvino

    rows, engines = [], {}
    for name, peer in (("llama.cpp Q4_0 / Q8_0", llamacpp), ("OpenVINO INT8 / INT4", openvino)):
        why = peer.unavailable()
        if why:
            rows.append(dict(impl=name, kind="baseline", unavailable=why))
            continue
        try:
            with tempfile.TemporaryDirectory() as d:  # loaded engines keep no file open
                if peer is llamacpp:
                    got = peer.prepare(model, prompt, new_tokens, d, prompt[:, :16])
                else:
                    got = peer.prepare(model, d, prompt[:, :16])
        except ImportError as e:  # installed, but not for this torch / transformers
            rows.append(dict(impl=name, kind="baseline", unavailable=f"fails to import: {e}"))
            continue
        except openvino.ChildFailed as e:  # its own venv is broken: the log's last line says why
            last = str(e).strip().splitlines()[-1]
            rows.append(dict(impl=name, kind="baseline", unavailable=f"its child failed: {last}"))
            continue
        for row, engine in got:
            rows.append(row)
            engines[row["impl"]] = (engine, peer.time_generation)
    return rows, engines


def run_llm_step(shape: str = "1b", prompt_len: int = 128, steps: int = 16, rounds: int = 4):
    """Where a decode step goes, on one W4A8 g32 model, interleaved rounds (the machine is
    shared): HF's own attention / norms / MLP gate, ``optimize_decoding_``'s parts alone, with
    its lean decoder-layer steps in Python and as one native call each, and with every layer
    in one native call (tersor.llm.stack); per round the median step and the time inside the
    tersor layers (each call timed; a native layer or stack step counts whole), so step -
    layers is the time outside them."""
    import inspect
    import statistics

    from tersor.llm import FastDecodeAttention, FastRMSNorm, FastSwiGLU
    from tersor.llm import layer as layer_mod
    from tersor.llm.layer import _Plan
    from tersor.llm.stack import _StackPlan
    from tersor.nn import PackedLinear

    model = build(shape)
    tersor.quantize_(model, tersor.W4A8Config(group_size=32), progress=False)
    print(tersor.optimize_decoding_(model))
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len))
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x / 4.x
    patched = [
        (FastDecodeAttention, "_tersor_decode_step", lambda self, args, kwargs: None),
        (FastRMSNorm, "forward", lambda self, x: super(FastRMSNorm, self).forward(x)),
        (FastSwiGLU, "forward", lambda self, x: super(FastSwiGLU, self).forward(x)),
        (_Plan, "step", lambda self, layer, x, kwargs: None),
        (_Plan, "_native_step", lambda self, x, x2, rows: None),
        (_StackPlan, "step", lambda self, model, kw: None),
    ]
    fast = [getattr(cls, name) for cls, name, _ in patched]
    modes = {  # how many of `patched` keep their fast version
        "HF attention / norms / gate": 0,
        "optimize_decoding_ parts": 3,
        "+ lean layer steps (Python)": 4,
        "+ lean layer steps (native)": 5,
        "+ whole stack in one call": 6,
    }
    inside, depth = [0.0], [0]
    layer_forward = PackedLinear.forward
    timed_functions = [(layer_mod, "_project"), (layer_mod, "_project_all")]
    timed_functions += [(PackedLinear, "forward"), (_Plan, "_native_step")]
    timed_functions += [(tersor._C, "decoder_layers_step")]
    originals = [getattr(owner, name) for owner, name in timed_functions]

    def timing(fn):  # the outermost timed call counts (_project_all calls _project, ...)
        def run(*args):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    inside[0] += time.perf_counter() - t0

        return run

    def measure():
        with torch.inference_mode():
            out = model(prompt, use_cache=True)
            cache = out.past_key_values
            times, inside[0] = [], 0.0
            for _ in range(steps):
                t0 = time.perf_counter()
                tok = out.logits[:, -1:].argmax(-1)
                out = model(tok, use_cache=True, **{cache_arg: cache})
                times.append(time.perf_counter() - t0)
        # the median step, and its share inside the layers as over all steps (a mean inside
        # beside a median step could exceed it when one step of a noisy run was slow)
        step = statistics.median(times)
        return step * 1e3, step * inside[0] / sum(times) * 1e3

    rows = {name: [] for name in modes}
    try:
        for (owner, name), fn in zip(timed_functions, originals):
            setattr(owner, name, timing(fn))
        fast[4] = _Plan._native_step  # (timed)
        for _ in range(rounds):
            for mode, keep in modes.items():
                for i, (cls, name, slow) in enumerate(patched):
                    setattr(cls, name, fast[i] if i < keep else slow)
                rows[mode].append(measure())
    finally:
        for (owner, name), fn in zip(timed_functions, originals):
            setattr(owner, name, fn)
        for i, ((cls, name, _), fn) in enumerate(zip(patched, fast)):
            if i != 4:  # (_native_step: restored with the timed functions)
                setattr(cls, name, fn)
        assert PackedLinear.forward is layer_forward
    print(
        f"Llama ({shape} shape) W4A8 g32, decode steps after a {prompt_len}-token prompt, "
        f"{torch.get_num_threads()} threads; per round: step ms / in tersor layers ms / outside"
    )
    out = []
    for name, got in rows.items():
        cells = "  ".join(f"{s:.1f} / {i:.1f} / {s - i:.1f}" for s, i in got)
        print(f"{name:<30}{cells}")
        out.append(dict(impl=name, step_ms=[s for s, _ in got], layers_ms=[i for _, i in got]))
    return out
