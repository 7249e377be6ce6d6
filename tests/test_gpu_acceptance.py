"""bench/gpu_acceptance.py in its CPU mode: every stage runs through the same code as on a GPU, on tiny sizes, and
writes its rows (to OUT and to the record file) as it finishes."""
import json
import math
import subprocess
import sys

import pytest

from helpers import REPO, read_jsonl, swift_env

VARIANTS = ["stock cross_entropy", "A", "B", "C", "lean A", "lean B", "lean C"]


@pytest.mark.e2e
def test_cpu_mode_writes_every_row(tmp_path):
    out, record = tmp_path / "out", tmp_path / "results_gpu.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--device", "cpu", "--out",
                           str(out), "--record", str(record), "--sft-groups", "C"], cwd=str(tmp_path), env=swift_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    (tmp_path / "acceptance.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    rows = read_jsonl(out / "rows.jsonl")
    by_stage = {}
    for r in rows:
        by_stage.setdefault(r.pop("stage"), []).append(r)
    assert list(by_stage) == ["loss", "sft", "decode", "vllm"]  # in order, each written when it finished

    sizes = json.load(open(out / "sizes.json"))["sizes"]
    loss = {(r["tokens"], r["variant"]): r for r in by_stage["loss"]}
    assert sorted(loss) == sorted((t, v) for t in sizes["loss_tokens"] for v in VARIANTS)
    for t in sizes["loss_tokens"]:
        stock = loss[(t, "stock cross_entropy")]
        assert stock["time x stock"] == 1.0 and stock["ms"] > 0
        # group A is cross-entropy over the same targets: the stock loss's value; the lean path gives each
        # group's own value without the logits
        assert math.isclose(loss[(t, "A")]["loss"], stock["loss"], rel_tol=1e-5)
        for g in "ABC":
            assert math.isclose(loss[(t, f"lean {g}")]["loss"], loss[(t, g)]["loss"], rel_tol=1e-4), (t, g)
            assert loss[(t, g)]["time x stock"] > 0 and loss[(t, g)]["ms"] > 0

    sft = {r["group"]: r for r in by_stage["sft"]}
    assert sorted(sft) == ["C"]  # one group: the stage runs the same code for each (the GPU run does all three)
    for r in sft.values():
        assert r["steps"] == sizes["sft_steps"] and r["s/step"] > 0 and math.isfinite(r["last loss"])
        assert r["memory GiB"] is None  # ms-swift logs accelerator memory only

    decode = {r["decoding"]: r for r in by_stage["decode"]}
    assert sorted(decode) == ["constrained", "free"]
    assert all(r["tokens"] > 0 for r in decode.values()) and decode["free"]["ms per decode step"] > 0
    c = decode["constrained"]  # the random tiny model may end its constrained answer at once: nothing to divide
    assert (c["grammar share of a decode step"] is None) == (c["decode steps"] < 4 or c["ms per decode step"] is None)

    vllm = by_stage["vllm"]
    importable = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0
    if not importable:
        assert [r["backend"] for r in vllm] == ["vLLM: not installed"]

    text = (out / "results_gpu.md").read_text()
    assert record.read_text() == text  # the record gets the same section
    assert "torch " in text and "ms-swift 4.6.0" in text and "command: `bench/gpu_acceptance.py --device cpu" in text
    for title in ("Loss stage", "`swift sft` steps per group", "Constrained decoding", "vLLM"):
        assert f"### {title}" in text
    assert "FAILED" not in text
