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

import functools
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


class ChildFailed(RuntimeError):
    """The OpenVINO venv's child process failed (a broken install there, an export that
    fails): the LLM bench reports the peer unavailable and goes on with the others."""


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
        raise ChildFailed(f"{name}: the OpenVINO export failed:\n{got.stderr[-3000:]}")


# optimum-intel pins transformers below the version tersor's tests use, so it often lives in an
# interpreter of its own: with this variable naming that interpreter's python, the OpenVINO
# side (export, load, logits check, generate) runs there, one child process serving the bench
# over a pipe, and its rounds still interleave with the other engines'.
PYTHON_ENV = "TERSOR_BENCH_OPENVINO_PYTHON"


def _here() -> bool:
    """optimum-intel imports in this interpreter."""
    import importlib.util

    try:
        return importlib.util.find_spec("optimum.intel") is not None
    except ModuleNotFoundError:
        return False


def unavailable() -> str | None:
    """None when OpenVINO can run (here or in PYTHON_ENV's interpreter), else why not."""
    if _here() or os.environ.get(PYTHON_ENV):
        return None
    return (
        "optimum-intel / openvino / nncf are not installed (pip install 'optimum-intel[openvino]'"
        f" into this or another venv, whose python {PYTHON_ENV} then names; not in CI: it pins"
        " its own transformers)"
    )


def _load(src: str, workdir: str, threads: int) -> list:
    """[(row, OVModelForCausalLM)] for each VARIANT exported from the HF folder `src` (kept
    under TERSOR_BENCH_OPENVINO_DIR when set, see prepare)."""
    from optimum.intel import OVModelForCausalLM

    ov_config = {
        "INFERENCE_NUM_THREADS": str(threads),
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
        row = dict(impl=name, kind="baseline", bytes=_weight_bytes(dst), convert_s=convert_s)
        out.append((row, ov))
    return out


def _checked(row: dict, got: torch.Tensor, ref: torch.Tensor) -> dict:
    err = ((got.float() - ref).norm() / ref.norm()).item()
    if not err < MAX_LOGIT_ERR[row["impl"]]:
        raise SystemExit(f"{row['impl']}: logits {err:.3g} off HF fp32: the export is wrong")
    return dict(row, logit_err=err)


def prepare(model, workdir: str, check_ids):
    """[(row, engine)] for each VARIANT exported from `model` (saved under `workdir`), its
    logits on check_ids checked against the float model's (MAX_LOGIT_ERR; the error is
    reported as logit_err); time engines with this module's time_generation. With
    TERSOR_BENCH_OPENVINO_DIR set, the exports are kept in that folder and reused by later
    runs (convert_s is then the load's): the export child peaks at ~18 GB on the 1B shape,
    which beside the bench's own fp32 model can exhaust a 24 GB host; an export made alone
    (same seed, same weights) avoids that. The logit check still runs on every load, so a
    stale export of other weights is refused."""
    src = os.path.join(workdir, "hf")
    model.save_pretrained(src)
    with torch.inference_mode():
        ref = model(check_ids).logits.float()
    threads = torch.get_num_threads()
    if not _here():
        server = _Server(os.environ[PYTHON_ENV], threads)
        try:
            loaded = server.load(src, workdir)
        except ChildFailed:
            server.close()
            raise
        return [
            (
                _checked(row, server.logits(row["impl"], check_ids, workdir), ref),
                _Remote(server, row["impl"]),
            )
            for row in loaded
        ]
    out = []
    for row, ov in _load(src, workdir, threads):
        with torch.inference_mode():
            out.append((_checked(row, ov(check_ids).logits, ref), ov))
    return out


@functools.lru_cache(maxsize=None)
def _generation():
    """bench/generation.py, loaded by path (this interpreter may not have tersor)."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generation.py")
    spec = importlib.util.spec_from_file_location("tersor_bench_generation", here)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_generation(engine, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Prefill ms and decode tokens/s of an engine from prepare, as the HF engines are timed."""
    if isinstance(engine, _Remote):
        return engine.server.ask(
            cmd="time", name=engine.name, prompt=prompt.tolist(), new_tokens=new_tokens
        )
    return _generation().time_generation(engine, prompt, new_tokens)


class _Remote:  # one variant loaded in the _Server's process
    def __init__(self, server, name: str):
        self.server, self.name = server, name


_REPLY = "@@tersor "  # marks the serving child's answers among whatever else it prints


class _Server:
    """This file run as `python openvino.py serve THREADS` in PYTHON_ENV's interpreter: one JSON
    request per stdin line, one _REPLY line per answer. Its stderr goes to a file whose tail is
    shown when it fails; it exits when the bench closes its stdin (or exits)."""

    def __init__(self, python: str, threads: int):
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, os.path.abspath(__file__), "serve", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                answer = json.loads(line[len(_REPLY) :])
                if "error" in answer:
                    break
                return answer["result"]
        self.log.seek(0)
        raise ChildFailed(
            f"the OpenVINO child ({os.environ.get(PYTHON_ENV)}) failed on {request['cmd']}:\n"
            + self.log.read()[-3000:]
        )

    def close(self) -> int:
        """Ends the child (its loop ends with stdin); returns its exit status."""
        self.proc.stdin.close()
        status = self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.log.close()
        return status

    def load(self, src: str, workdir: str) -> list:
        return self.ask(cmd="load", src=src, workdir=workdir)

    def logits(self, name: str, ids: torch.Tensor, workdir: str) -> torch.Tensor:
        import numpy as np

        path = os.path.join(workdir, "logits.npy")
        self.ask(cmd="logits", name=name, ids=ids.tolist(), path=path)
        return torch.from_numpy(np.load(path))


def _serve(threads: int) -> None:
    import traceback

    import numpy as np

    torch.set_num_threads(threads)
    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "load":
                got = _load(req["src"], req["workdir"], threads)
                models = {row["impl"]: ov for row, ov in got}
                result = [row for row, _ in got]
            elif req["cmd"] == "logits":
                with torch.inference_mode():
                    logits = models[req["name"]](torch.tensor(req["ids"])).logits.float()
                np.save(req["path"], logits.numpy())
                result = None
            else:  # time
                prompt = torch.tensor(req["prompt"])
                result = time_generation(models[req["name"]], prompt, req["new_tokens"])
            answer = dict(result=result)
        except Exception:
            traceback.print_exc()
            answer = dict(error=True)
        print(_REPLY + json.dumps(answer), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    del sys.path[0]  # this file's folder: `openvino` must be the package, not this file
    _serve(int(sys.argv[2]))
