"""`python -m tersor.bench --family conv` on its smallest layer: every implementation checked
and timed, ratios against both baselines."""

import tersor
from tersor.bench.__main__ import run_conv


def test_conv_family_times_ours_against_both_baselines(capsys):
    rows = run_conv(rounds=1, signed=False, layers=["res5.3x3"])
    ours = [r for r in rows if r["kind"] == "ours"]
    assert len(ours) == 1 and ours[0]["us"] > 0
    assert set(ours[0]["ratios"]) >= {"torch fp32 conv"}
    assert all(v > 0 for v in ours[0]["ratios"].values())
    assert "res5.3x3" in capsys.readouterr().out


def test_llm_step_breakdown_on_the_tiny_shape(capsys):
    """`--family llm-step`: HF's decode steps, optimize_decoding_'s parts, with its lean
    layer steps (Python, native) and the whole stack in one call, interleaved, each with its
    time inside the tersor layers; the fast paths are restored afterwards."""
    from tersor.bench.llm import run_llm_step
    from tersor.llm import FastDecodeAttention, layer, stack
    from tersor.nn import PackedLinear

    def current():
        return (
            FastDecodeAttention._tersor_decode_step,
            layer._Plan.step,
            layer._Plan._native_step,
            stack._StackPlan.step,
            tersor._C.decoder_layers_step,
            layer._project,
            PackedLinear.forward,
        )

    fast = current()
    rows = run_llm_step("tiny", prompt_len=8, steps=3, rounds=2)
    assert [r["impl"] for r in rows] == [
        "HF attention / norms / gate",
        "optimize_decoding_ parts",
        "+ lean layer steps (Python)",
        "+ lean layer steps (native)",
        "+ whole stack in one call",
    ]
    for r in rows:
        assert len(r["step_ms"]) == 2 and all(
            0 < i < s for s, i in zip(r["step_ms"], r["layers_ms"])
        )
    assert current() == fast
    assert "in tersor layers" in capsys.readouterr().out


def test_llm_family_on_the_tiny_shape(capsys):
    """`--family llm` end to end on a tiny Llama: fp32 and every tersor scheme checked against
    the fp32 logits, timed, with bytes per token and the memory-floor percentage."""
    import pytest

    pytest.importorskip("transformers", reason="transformers is not installed")
    import torch

    from tersor.bench.llm import run_llm

    rows = run_llm("tiny", prompt_len=16, new_tokens=4, bandwidth=20e9)
    ours = [r for r in rows if r["kind"] == "ours"]
    assert [r["impl"] for r in ours] == [
        "tersor W8A8",
        "tersor W7A8",
        "tersor W8",
        "tersor W4A8 g32",
        "tersor W4 g128",
        "tersor W4 g128 a16",
        "tersor W4A8 g32 bf16",
        "tersor W4 g128 bf16",
        "tersor W4 g128 medium",
        "tersor 2:4",
        "tersor 2:4 W8A8",
    ]
    assert torch.get_float32_matmul_precision() == "highest"  # restored after its timing
    fp32 = rows[0]
    # 2:4 fp32 keeps half the values and a byte of positions per 4 weights: 0.56x the bytes
    assert all(
        r["bytes"] < fp32["bytes"] * (0.6 if r["impl"] == "tersor 2:4" else 0.5)
        and r["decode_tok_s"] > 0
        for r in ours
    )
    assert all(r["floor_pct"] > 0 and "HF fp32 eager" in r["ratios"] for r in ours)
    # a local probe <= the best (equal when every probe read below the given 20 GB/s)
    assert all(r["local_pct"] >= r["floor_pct"] * (1 - 1e-12) for r in ours)
    assert "decode tok/s" in capsys.readouterr().out


def test_tp_family_on_the_tiny_shape(capsys):
    """`--family tp` end to end on a tiny Llama: 2 gloo ranks x 1 thread against one process,
    logits checked, the collectives counted, each rank's weights half of the whole."""
    import pytest

    pytest.importorskip("transformers", reason="transformers is not installed")
    from tersor.bench.tp import run_tp

    rows = run_tp("tiny", steps=4, prompt_len=8, schemes=["W4A8 g32"])
    decode = [r for r in rows if r["impl"].startswith("tp decode")]
    assert [r["impl"] for r in decode] == ["tp decode W4A8 g32 global", "tp decode W4A8 g32 local"]
    for r in decode:
        assert r["two_s"] > 0 and r["bytes_per_token"] > 0
        assert abs(r["weight_fraction"] - 0.5) < 0.01
    assert len([r for r in rows if r["impl"].startswith("tp layer")]) == 3
    assert "standing in for two machines" in capsys.readouterr().out


def test_cnn_family_converts_every_convolution(capsys):
    """`--family cnn` on small images: MobileNetV2 (17 depthwise layers) and ResNet-18 layouts,
    every convolution converted, checked against fp32, timed."""
    from tersor.bench.cnn import run_cnn

    rows = run_cnn(batches=(1,), size=64, rounds=1, peers=("torch.ao",))
    assert [r["impl"] for r in rows] == [
        "cnn MobileNetV2 b1 static int8",
        "cnn ResNet-18 b1 static int8",
    ]
    assert all(r["ratio"] > 0 and r["cosine"] > 0.9 and r["peer_ratio"] > 0 for r in rows)
    assert {r["best_peer"] for r in rows} == {"torch.ao static"}
    out = capsys.readouterr().out
    assert "52 / 52 convs converted by W8A8, 53 layers" in out
    assert "20 / 20 convs converted by W8A8, 21 layers" in out


def test_real_shapes_preset(capsys, monkeypatch):
    """`--shapes real` runs the real models' layer shapes (one small stand-in here)."""
    from tersor.bench import __main__ as cli

    assert all(len(s) == 2 for s in cli.REAL_SHAPES) and len(cli.REAL_SHAPES) == 24
    assert any(k % 256 for k, _ in cli.REAL_SHAPES)  # hidden sizes that are not powers of two
    monkeypatch.setattr(cli, "REAL_SHAPES", [(1600, 48)])
    cli.main(["--shapes", "real", "--m", "1", "--rounds", "1", "--family", "int8"])
    assert "K=1600 N=48" in capsys.readouterr().out


def test_openvino_peer_in_another_interpreter(monkeypatch, tmp_path):
    """The OpenVINO peer's other-interpreter path (bench/openvino.py _Server): listed as
    available once TERSOR_BENCH_OPENVINO_PYTHON names an interpreter, and a child that cannot
    serve (here: this interpreter, without optimum-intel) fails with its own traceback rather
    than hanging or returning rows."""
    import sys

    import pytest

    from tersor.bench import openvino

    if openvino._here():
        pytest.skip("optimum-intel is installed here: the bench runs it in this process")
    monkeypatch.delenv(openvino.PYTHON_ENV, raising=False)
    assert "not installed" in openvino.unavailable()
    monkeypatch.setenv(openvino.PYTHON_ENV, sys.executable)
    assert openvino.unavailable() is None
    server = openvino._Server(sys.executable, 1)
    with pytest.raises(RuntimeError, match="failed on load(.|\n)*optimum"):
        server.load(str(tmp_path / "hf"), str(tmp_path))
    assert server.close() == 0


def test_llm_bench_goes_on_when_the_openvino_child_fails(monkeypatch):
    """A broken OpenVINO venv (here: this interpreter, without optimum-intel) makes the LLM
    bench list the peer as unavailable with the child's reason, not end the whole run."""
    import sys

    import pytest
    import torch

    from tersor.bench import llamacpp, llm, openvino

    if openvino._here():
        pytest.skip("optimum-intel is installed here: the bench runs it in this process")
    monkeypatch.setenv(openvino.PYTHON_ENV, sys.executable)
    monkeypatch.setattr(llamacpp, "unavailable", lambda: "not in this test")
    model = llm.build("tiny")
    prompt = torch.randint(0, model.config.vocab_size, (1, 8))
    rows, engines = llm._peers(model, prompt, 2)
    assert engines == {}
    (row,) = [r for r in rows if r["impl"].startswith("OpenVINO")]
    assert row["unavailable"].startswith("its child failed:") and "optimum" in row["unavailable"]


def test_busy_family_on_the_tiny_shape(capsys):
    """`--family busy`: decode alone and beside busy-loop processes, the thread governor on
    and off, one thread (and llama.cpp when installed); the busy processes end with the block,
    and the governor and thread count are left as they were."""
    import torch

    import tersor
    from tersor.bench.busy import busy_processes, run_busy

    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    was, threads = tersor.cpu_info()["adaptive_threads"], torch.get_num_threads()
    rows = run_busy("tiny", prompt_len=8, new_tokens=3, rounds=1)
    assert [r["impl"] for r in rows][:3] == [
        "tersor W4A8 g32",
        "tersor W4A8 g32, fixed threads",
        "tersor W4A8 g32, one thread",
    ]
    assert all(r["decode_tok_s"] > 0 and r["busy_decode_tok_s"] > 0 for r in rows)
    assert set(rows[0]["ratios"]) == {r["impl"] for r in rows[1:]}
    assert tersor.cpu_info()["adaptive_threads"] == was and torch.get_num_threads() == threads
    assert "busy / alone" in capsys.readouterr().out


def test_interleaved_timing_leaves_the_gaps_out():
    """gap_s pauses before each block (another implementation's pool stops spinning) are not
    part of the time per call; every call of every implementation runs with its own index."""
    import time

    from tersor.bench.timing import time_interleaved

    seen = {"a": [], "b": []}

    def call(name, s):
        def fn(x, i):
            seen[name].append(i)
            time.sleep(s)

        return fn

    t = time_interleaved({"a": call("a", 0.002), "b": call("b", 0.004)}, None, rounds=3,
                         target_s=0.004, gap_s=0.05)  # fmt: skip
    assert 0.002 <= t["a"] < 0.02 and 0.004 <= t["b"] < 0.025, t
    assert seen["a"] == list(range(len(seen["a"]))) and len(seen["b"]) >= 4
