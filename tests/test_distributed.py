"""Tensor parallelism (tersor.distributed): 2 gloo processes x 1 thread against the
single-process model, for every scheme; bad plans fail on every rank without a hang."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist

import tp_workers

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, scenario: str, timeout: float = 240, **kwargs) -> list:
    """Run tp_workers.scenario_<scenario> on WORLD spawned ranks; their results, in rank order.
    A rank still running after `timeout` s is a hang: killed, and the test fails."""
    import torch.multiprocessing as mp

    out_dir = str(tmp_path / scenario)
    os.makedirs(out_dir, exist_ok=True)
    ctx = mp.start_processes(
        tp_workers.worker,
        args=(WORLD, _free_port(), scenario, out_dir, kwargs),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"tensor-parallel scenario '{scenario}' hung (> {timeout} s)")
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r}:\n{res['crash']}"
    return results


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def mlp_results(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("tp"), "mlp")


@pytest.mark.parametrize("scheme", tp_workers.SCHEMES)
def test_mlp_matches_single_process(mlp_results, scheme):
    for r, res in enumerate(mlp_results):
        got = res[scheme]
        assert got["types"][1:] == ["RowwiseLinear", "ColwiseLinear"], got["types"]
        # column-wise: the shard's columns are the whole layer's, bit for bit
        assert got["colwise_bitwise"], f"rank {r}: column-wise shard differs from its columns"
        # the row-wise sum differs from the unsharded one only in the order of the float sum
        # (int8 activations: the same codes, the whole row's scale), so a few ulps
        assert _rel(got["y"], got["ref"]) < 2e-6, (r, _rel(got["y"], got["ref"]))
        torch.testing.assert_close(got["y1"], got["ref"][:1], rtol=1e-5, atol=1e-5)
    # every rank ends with the same replicated output
    assert torch.equal(mlp_results[0][scheme]["y"], mlp_results[1][scheme]["y"])


@pytest.fixture(scope="module")
def llama_results(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("tp"), "llama")


@pytest.mark.parametrize("scheme", tp_workers.LLM_SCHEMES)
def test_llama_matches_single_process(llama_results, scheme):
    for res in llama_results:
        got = res[scheme]
        assert got["layers"] == 2 * 7 + 1  # q, k, v, o, gate, up, down per block; lm_head
        # per rank: half of the sharded layers' bytes (+ the per-channel scales a row-wise
        # int8 shard keeps whole; a block-sparse rank holds the blocks its half kept)
        low = 0.45 if "block" in scheme else 0.5
        assert low <= got["ratio"] < 0.56, got["ratio"]
        assert _rel(got["y"], got["ref"]) < 1e-4, _rel(got["y"], got["ref"])
        assert torch.equal(got["gen"], got["ref_gen"])


def test_llama_bf16(tmp_path):
    res = run_ranks(tmp_path, "llama", schemes=("w8a8", "w4a8"), dtype=torch.bfloat16)
    for r in res:
        for scheme in ("w8a8", "w4a8"):
            got = r[scheme]
            # bf16 between the layers: a rounding flip in one element may carry on
            assert _rel(got["y"], got["ref"]) < 2e-2, (scheme, _rel(got["y"], got["ref"]))


def test_other_decoder_families(tmp_path):
    for got in run_ranks(tmp_path, "families"):
        for family, r in got.items():
            # Phi-3: qkv_proj, o, gate_up_proj, down per block (+ lm_head); the others 7 + 1
            assert r["rows"] == (2 * 4 + 1 if family == "phi3" else 2 * 7 + 1), (family, r["rows"])
            assert _rel(r["y"], r["ref"]) < 1e-4, (family, _rel(r["y"], r["ref"]))
            assert torch.equal(r["gen"], r["ref_gen"]), family


def test_torch_styles_mesh_replicated_input_local_scale(tmp_path):
    for got in run_ranks(tmp_path, "styles"):
        assert torch.equal(got["torch_styles"], got["strings"])
        assert _rel(got["strings"], got["ref"]) < 2e-6
        y, ref = got["replicated_input"]
        assert _rel(y, ref) < 2e-6
        # each rank's own activation scale: another rounding of x, as close as W8A8 itself
        y, ref = got["local"]
        assert 0 < _rel(y, ref) < 0.05


def test_bad_plans_fail_on_every_rank(tmp_path):
    res = run_ranks(tmp_path, "errors")
    for r, got in enumerate(res):
        assert "out_features=31 does not split evenly over 2 ranks" in got["odd_out"], got
        assert "would split an int4 group of 32" in got["cut_group"], got
        assert "layer '1'" in got["cut_group"]
        assert "disagree" in got["mismatch"], got
        assert "unknown style 'diagonal'" in got["unknown_style"], got
        want = "unknown style 'diagonal'" if r == 0 else "disagree"
        assert want in got["one_rank_bad_plan"], got
        assert "no module of the model matches" in got["no_match"], got
        if r == 1:
            assert "weight_scale" in got["one_rank_fails"] and "layer '0'" in got["one_rank_fails"]
        else:
            assert "another rank failed" in got["one_rank_fails"], got
        for key in ("odd_out", "cut_group", "mismatch", "one_rank_fails"):
            assert got[key + "/unchanged"], f"rank {r}: '{key}' changed the model"


@pytest.mark.parametrize("scheme", ["w4a8", "w4a8-act-order", "w8a8"])
def test_sharded_checkpoint_loading(tmp_path, scheme):
    import tersor

    model = tp_workers._compress_llm(tp_workers.tiny_llama(), scheme)
    path = str(tmp_path / "ckpt")
    tersor.save_pretrained(model, path)
    res = run_ranks(tmp_path, "checkpoint", path=path, scheme=scheme)
    for got in res:
        assert got["rows"] == 2 * 7 + 1  # lm_head: dense in the checkpoint, read whole, cut
        assert 0.5 <= got["ratio"] < 0.56, got["ratio"]
        assert _rel(got["y"], got["ref"]) < 1e-4


def test_data_parallel_gptq_sums_hessians_over_ranks(tmp_path):
    """Each rank calibrates on its half of the batches; the Hessians are summed, so both ranks
    solve the same weights, those of one process calibrating on every batch (up to the order
    of the float sums in the Hessians)."""
    import tersor

    res = run_ranks(tmp_path, "dp")
    a, b = res[0]["state"], res[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = tp_workers.tiny_llama()
    cfg = tersor.W4A8Config(group_size=32, method="gptq")
    tersor.quantize_(model, cfg, calibration=tp_workers.dp_batches())
    one = tp_workers.gptq_state(model)
    codes = [k for k in one if "weight_int4" in k]
    assert len(codes) == 2 * 7 + 1
    same = sum(int((one[k] == a[k]).sum()) for k in codes) / sum(one[k].numel() for k in codes)
    assert same > 0.99, same
    for r in res:
        assert "cannot run data-parallel" in r["awq"]
