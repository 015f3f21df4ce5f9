"""OpenVINO on the very model tersor runs: the Hugging Face Llama saved to a folder, exported by
optimum-intel to an OpenVINO stateful model (KV cache inside the model) and its weights
compressed by NNCF at export, timed through optimum's ``generate`` with the same prompt,
greedy decode and thread count (``INFERENCE_NUM_THREADS``, the LATENCY hint).

Two files, as a user would make them:
- INT8: every weight int8 per output channel, symmetric (NNCF ``bits=8``);
- INT4: every projection int4 group 128 symmetric (``ratio=1.0``); NNCF keeps the tied
  embedding / lm_head matrix at int8, its default "backup" precision.
OpenVINO's CPU plugin quantizes the activations of int4 / int8 weight-compressed matmuls to int8
on the fly (dynamic quantization), as tersor's A8 schemes do. Logits are checked against HF
fp32 before timing. Not in CI (optimum-intel pins its own transformers version).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

VARIANTS = {  # name: NNCF weight compression at export
    "OpenVINO INT8": dict(bits=8, sym=True),
    "OpenVINO INT4": dict(bits=4, group_size=128, sym=True, ratio=1.0),
}
# logits' relative error to HF fp32 on the check prompt, above which the export is wrong (an
# unrelated model measures ~1.4); INT4 g128 on random weights measures ~0.65 on the 1B shape
MAX_LOGIT_ERR = {"OpenVINO INT8": 0.25, "OpenVINO INT4": 0.9}


def _weight_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".bin")
    )


def export(src: str, dst: str, name: str) -> None:
    """optimum-intel's export of the HF folder `src` to an OpenVINO IR in `dst`, weights
    compressed by NNCF as VARIANTS[name] says. In a child process: tracing and compressing a 1B
    fp32 model peaks at ~18 GB, which must not add to the benchmark's own models."""
    code = (
        "import sys, json\n"
        "from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig\n"
        "q = OVWeightQuantizationConfig(**json.loads(sys.argv[3]))\n"
        "m = OVModelForCausalLM.from_pretrained(sys.argv[1], export=True, "
        "quantization_config=q, compile=False)\n"
        "m.save_pretrained(sys.argv[2])\n"
    )
    cmd = [sys.executable, "-c", code, src, dst, json.dumps(VARIANTS[name])]
    got = subprocess.run(cmd, capture_output=True, text=True)
    if got.returncode != 0:
        raise RuntimeError(f"{name}: the OpenVINO export failed:\n{got.stderr[-3000:]}")


def prepare(model, workdir: str, check_ids):
    """[(row, OVModelForCausalLM)] for each VARIANT exported from `model` (saved under
    `workdir`), its logits on check_ids checked against the float model's (MAX_LOGIT_ERR; the
    error is reported as logit_err). With TERSOR_BENCH_OPENVINO_DIR set, the exports are kept
    in that folder and reused by later runs (convert_s is then the load's): the export child
    peaks at ~18 GB on the 1B shape, which beside the bench's own fp32 model can exhaust a
    24 GB host; an export made alone (same seed, same weights) avoids that. The logit check
    still runs on every load, so a stale export of other weights is refused."""
    from optimum.intel import OVModelForCausalLM

    src = os.path.join(workdir, "hf")
    model.save_pretrained(src)
    with torch.inference_mode():
        ref = model(check_ids).logits.float()
    ov_config = {
        "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
        "CACHE_DIR": "",
    }
    out = []
    kept = os.environ.get("TERSOR_BENCH_OPENVINO_DIR")  # exports kept between runs
    for name in VARIANTS:
        dst = os.path.join(kept or workdir, name.split()[-1])
        t0 = time.perf_counter()
        if not (kept and os.path.exists(os.path.join(dst, "openvino_model.xml"))):
            export(src, dst, name)
        convert_s = time.perf_counter() - t0
        ov = OVModelForCausalLM.from_pretrained(dst, ov_config=ov_config)
        got = ov(check_ids).logits.float()
        err = ((got - ref).norm() / ref.norm()).item()
        if not err < MAX_LOGIT_ERR[name]:
            raise SystemExit(f"{name}: logits {err:.3g} off HF fp32: the export is wrong")
        row = dict(
            impl=name,
            kind="baseline",
            bytes=_weight_bytes(dst),
            convert_s=convert_s,
            logit_err=err,
        )
        out.append((row, ov))
    return out
