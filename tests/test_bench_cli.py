"""`python -m tersor.bench --family conv` on its smallest layer: every implementation checked
and timed, ratios against both baselines."""

from tersor.bench.__main__ import run_conv


def test_conv_family_times_ours_against_both_baselines(capsys):
    rows = run_conv(rounds=1, signed=False, layers=["res5.3x3"])
    ours = [r for r in rows if r["kind"] == "ours"]
    assert len(ours) == 1 and ours[0]["us"] > 0
    assert set(ours[0]["ratios"]) >= {"torch fp32 conv"}
    assert all(v > 0 for v in ours[0]["ratios"].values())
    assert "res5.3x3" in capsys.readouterr().out
