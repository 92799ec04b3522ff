"""`mlstm-tune bench` on this machine: without a GPU, ``--smoke`` runs every row kind on tiny shapes under Triton's
interpreter and writes the JSON, markdown and PNG; missing comparison libraries are reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the command")


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=900)  # fmt: skip


def test_smoke_bench_writes_rows_table_and_plot(tmp_path: Path):
    out = _bench("--smoke", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "cpu-interpreter-bench.json").read_text())
    assert {(r["op"], r["pass"]) for r in rows} == {("chunkwise", "fw"), ("chunkwise", "fwbw"), ("step", "fw"),
                                                    ("packed", "fw"), ("packed", "fwbw")}  # fmt: skip
    for r in rows:
        assert {"op", "pass", "B", "NH", "S", "DHQK", "DHHV"} <= set(r)
        if r["op"] == "packed":  # the packed documents against the same documents padded
            assert r["ours_ms"] > 0 and r["padded_ms"] > 0 and r["documents"] == 4
            continue
        assert r["ours_ms"] > 0 and r["default_ms"] > 0
        for column in ("upstream_ms", "fla_ms", "jax_ms") + (("jax_scan_ms",) if r["op"] == "step" else ()):
            assert column in r or column in r["notes"]  # measured, or a reason why not
    table = (tmp_path / "cpu-interpreter-bench.md").read_text()
    assert "says nothing about speed" in table and table.count("| chunkwise |") == 2
    assert "Packed documents (cu_seqlens)" in table
    assert (tmp_path / "cpu-interpreter-bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_gpu_needs_smoke(tmp_path: Path):
    out = _bench("--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "--smoke" in out.stdout


def test_shards_cover_every_row_once_and_mix_passes():
    from autotune.bench import rows, shard

    full = rows(False)
    parts = [shard(full, f"{i}/2") for i in range(2)]
    assert sorted(map(repr, parts[0] + parts[1])) == sorted(map(repr, full))
    for part in parts:  # each GPU gets forward and forward+backward rows, so the shards take similar time
        assert {r.pass_ for r in part if r.op == "chunkwise"} == {"fw", "fwbw"}
    with pytest.raises(ValueError):
        shard(full, "2/2")
    with pytest.raises(ValueError):
        shard(full, "one of two")


def test_combine_orders_rows_of_several_shards_as_one_table(tmp_path: Path):
    from autotune.bench import rows

    full = rows(False)
    made = [{"op": r.op, "pass": r.pass_, "B": r.B, "NH": r.NH, "S": r.S, "DHQK": r.DHQK, "DHHV": r.DHHV,
             "ours_ms": 1.0 + n, "upstream_ms": 3.0 + n, "notes": {}} for n, r in enumerate(full)]  # fmt: skip
    for i, part in enumerate((made[1::2], made[0::2])):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "NVIDIA_H200-bench.json").write_text(json.dumps(part))
    out = _bench("--combine", *(str(tmp_path / f"s{i}" / "NVIDIA_H200-bench.json") for i in (0, 1)), "--out",
                 str(tmp_path / "all"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "all" / "NVIDIA_H200-bench.json").read_text()) == made
    assert "Benchmark on NVIDIA H200 (GPU" in (tmp_path / "all" / "NVIDIA_H200-bench.md").read_text()
    # a rerun of some rows (e.g. --only step) given last replaces those rows and keeps the others
    rerun = tmp_path / "rerun" / "NVIDIA_H200-bench.json"
    rerun.parent.mkdir()
    rerun.write_text(json.dumps([{**made[-1], "ours_ms": 0.5}]))
    out = _bench("--combine", str(tmp_path / "all" / "NVIDIA_H200-bench.json"), str(rerun), "--out",
                 str(tmp_path / "again"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "replaces 1 row" in out.stdout  # overlapping shards do not vanish silently
    assert json.loads((tmp_path / "again" / "NVIDIA_H200-bench.json").read_text()) == made[:-1] + [
        {**made[-1], "ours_ms": 0.5}
    ]
    other = tmp_path / "A100-bench.json"
    other.write_text("[]")
    out = _bench("--combine", str(tmp_path / "s0" / "NVIDIA_H200-bench.json"), str(other), cwd=tmp_path)
    assert out.returncode == 2 and "one GPU model" in out.stderr
    broken = tmp_path / "x" / "NVIDIA_H200-bench.json"
    broken.parent.mkdir()
    broken.write_text('{"op": "chunkwise"}')  # JSON, but not a table of rows
    out = _bench("--combine", str(tmp_path / "s0" / "NVIDIA_H200-bench.json"), str(broken), cwd=tmp_path)
    assert out.returncode == 2 and "not a bench table" in out.stderr and "Traceback" not in out.stderr


def test_row_filters_select_the_op_and_pass(tmp_path: Path):
    out = _bench("--smoke", "--only", "chunkwise", "--pass", "fw", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "cpu-interpreter-bench.json").read_text())
    assert [(r["op"], r["pass"]) for r in rows] == [("chunkwise", "fw")]


def test_forward_backward_rows_do_not_time_a_gradient_accumulation():
    """The fwbw call computes every input's gradient and leaves .grad alone, as a training step after
    zero_grad(set_to_none=True) does: accumulating into .grad added a bf16 add per input to the timed call."""
    import torch

    from autotune.bench import _sequence_call

    seen = {}

    def kernel(q, k, v, i, f):
        seen.update(q=q, k=k, v=v, i=i, f=f)
        return ((q * k).sum(-1, keepdim=True) + i[..., None] + f[..., None]) * v

    x = {n: torch.randn(1, 2, 5, 3) for n in "qkv"} | {n: torch.randn(1, 2, 5) for n in "if"}
    call = _sequence_call(kernel, x, "fwbw")
    call()
    call()
    assert set(seen) == set("qkvif") and all(t.requires_grad and t.grad is None for t in seen.values())
    _sequence_call(lambda q, k, v, i, f: q * v, x, "fwbw")()  # a kernel without gates (SDPA) is timed too


def test_every_benchmarked_shape_has_a_preset_that_tunes_it():
    """Each chunkwise and step row of the bench is a shape of some preset in its direction, so a run of the presets
    leaves an exact database entry for every row instead of a neighbour's (the training presets once stopped at
    S=8192, and the S=32768 rows ran with the S=8192 winner)."""
    from autotune.bench import rows
    from autotune.tune import PRESETS

    tuned = {(s.op.split(":")[0], s.direction, s.B, s.NH, s.S, s.DHQK, s.DHHV) for ps in PRESETS.values() for s in ps}
    # a packed row dispatches each document by its own length: no one shape to tune
    untuned = [r for r in rows(smoke=False) if r.op != "packed"
               and (r.op, r.pass_, r.B, r.NH, r.S, r.DHQK, r.DHHV) not in tuned]  # fmt: skip
    assert not untuned, f"bench rows no preset tunes: {untuned}"


def test_the_step_copy_baseline_moves_the_bytes_the_bandwidth_counts():
    from autotune import bench

    row = bench.Row("step", "fw", 3, 2, 1, 16, 8)
    x = bench._inputs(row, "cpu", torch.float32)
    copies = bench.StateCopies(row, x)
    assert copies.src.dtype == torch.float32 and copies.src.dim() == 1  # one buffer: one kernel per copy
    read_and_written = 2 * copies.src.numel() * copies.src.element_size()
    assert read_and_written == bench.step_bytes({"B": 3, "NH": 2, "DHQK": 16, "DHHV": 8})
    assert copies.src.numel() == sum(t.numel() for t in bench._step_state(row, x))
    copies.src.normal_()
    before = copies.src.clone()
    copies.copy()
    copies.in_place()
    assert torch.equal(copies.dst, before) and torch.equal(copies.src, before)


def test_the_step_table_holds_ours_against_a_copy_of_the_same_bytes():
    from autotune import bench

    row = {"op": "step", "pass": "fw", "B": 16, "NH": 8, "S": 1, "DHQK": 256, "DHHV": 512, "notes": {},
           "ours_ms": 0.09, "ours_compiled_ms": 0.08, "ours_graph_ms": 0.050, "copy_graph_ms": 0.040,
           "upstream_ms": 0.1, "jax_scan_ms": 0.055}  # fmt: skip
    table = bench.markdown("GPU", [row], "timing")
    line = next(ln for ln in table.splitlines() if ln.startswith("| 16 | 8 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    nbytes = bench.step_bytes(row)
    assert cells[3:6] == ["0.090", "0.080", "0.050"]  # eager, compiled, graph
    assert cells[6] == "0.055"  # the JAX step per step of its fori_loop
    assert cells[9] == "0.040" and cells[10] == f"{nbytes / 0.050e-3 / 1e9:.0f}"
    assert cells[11] == f"{nbytes / 0.040e-3 / 1e9:.0f}" and cells[12] == "80%" and cells[13] == "-"


def test_the_floor_counts_the_bytes_of_the_inputs_and_outputs_and_the_chunkwise_products():
    """Traffic: every input read and every output written once, counted here from the bench's own tensors; matrix
    work: the chunkwise form's products per chunk of 64 (the causal half within a chunk), three times over for
    forward+backward."""
    from autotune import bench, floor

    row = bench.Row("chunkwise", "fw", 2, 3, 128, 16, 32)
    x = bench._inputs(row, "cpu", torch.bfloat16)
    inputs = sum(t.numel() * t.element_size() for t in x.values())
    h = torch.empty(2, 3, 128, 32, dtype=torch.bfloat16)
    out_bytes = h.numel() * h.element_size()
    fw = {"op": "chunkwise", "pass": "fw", "B": 2, "NH": 3, "S": 128, "DHQK": 16, "DHHV": 32}
    assert floor.traffic_bytes(fw) == inputs + out_bytes
    # backward: the inputs and dh read, a gradient of every input written
    assert floor.traffic_bytes({**fw, "pass": "fwbw"}) == (inputs + out_bytes) + (inputs + out_bytes) + inputs
    L, chunks = floor.CHUNK, 128 // floor.CHUNK
    per_chunk = 2 * L * 16 * 32 + 2 * L * 16 * 32 + L * L * 16 + L * L * 32  # q C, k^T v, causal q k^T and S v
    assert floor.matrix_flops(fw) == 2 * 3 * chunks * per_chunk
    assert floor.matrix_flops({**fw, "pass": "fwbw"}) == 3 * floor.matrix_flops(fw)
    peaks = floor.Peaks(copy_tb_s=2.0, matmul_tflop_s=500.0)
    cols = floor.floor_columns(fw, peaks)
    assert cols["floor_traffic_ms"] == pytest.approx((inputs + out_bytes) / 2e12 * 1e3)
    assert cols["floor_compute_ms"] == pytest.approx(2 * 3 * chunks * per_chunk / 500e12 * 1e3)
    assert cols["floor_ms"] == max(cols["floor_traffic_ms"], cols["floor_compute_ms"])
    # the 7B forward row: 1.6 GB and about 0.3 TFLOP, as docs/performance.md counts it
    seven_b = {"op": "chunkwise", "pass": "fw", "B": 32, "NH": 8, "S": 2048, "DHQK": 256, "DHHV": 512}
    assert 1.5e9 < floor.traffic_bytes(seven_b) < 1.7e9 and 0.29e12 < floor.matrix_flops(seven_b) < 0.31e12


def test_the_table_shows_each_row_against_its_floor_and_a_long_sequence_per_token():
    from autotune import bench

    base = {"op": "chunkwise", "NH": 8, "DHQK": 256, "DHHV": 512, "notes": {}}
    table = [{**base, "pass": "fw", "B": 32, "S": 2048, "ours_ms": 2.0, "floor_ms": 0.5},
             {**base, "pass": "fw", "B": 8, "S": 8192, "ours_ms": 3.0},
             {**base, "pass": "fwbw", "B": 8, "S": 8192, "ours_ms": 10.0},
             {**base, "pass": "fw", "B": 1, "S": 262144, "ours_ms": 11.0, "floor_ms": 2.2}]  # fmt: skip
    text = bench.markdown("GPU", table, "timing")
    line = next(ln for ln in text.splitlines() if ln.startswith("| chunkwise | fw | 32 |"))
    assert line.rstrip(" |").endswith("0.500 | 25%")
    assert next(ln for ln in text.splitlines() if ln.startswith("| chunkwise | fw | 8 |")).endswith("| - | - |")
    long = next(ln for ln in text.splitlines() if ln.startswith("| fw | 8 | 262144 |"))
    # 11 ms for 4 x 65,536 tokens = 2.75 per 65,536, against the mean 2.5 of the batched forward rows (not fwbw)
    assert long.endswith("| 11.000 | 2.750 | 2.500 | 1.100 |")


def test_long_rows_are_their_own_group_and_an_empty_selection_is_an_error(tmp_path: Path):
    from autotune.bench import TOKENS, group, rows

    long = [r for r in rows(False) if group(r) == "long"]
    assert {(r.pass_, r.S) for r in long} == {(p, S) for p in ("fw", "fwbw") for S in (65536, 262144)}
    assert all(r.B == 1 and r.op == "chunkwise" and r.S >= TOKENS for r in long)
    assert not [r for r in rows(False) if group(r) == "chunkwise" and r.B * r.S != TOKENS]
    out = _bench("--smoke", "--only", "long", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "no smoke rows" in out.stderr


def test_every_column_but_the_defaults_times_the_database_choice(monkeypatch):
    """The defaults' column turns the dispatcher off (MLSTM_AUTOTUNE_DISPATCH=0); the columns measured after it, the
    JAX entry's and ours by wall clock, must run the database's choice again, as ours_ms does (a JAX row timed on
    the built-in default would compare two different kernels)."""
    from autotune import bench

    seen = {}

    def recorder(column):
        def make(*args, **kwargs):
            seen[column] = os.environ.get("MLSTM_AUTOTUNE_DISPATCH")
            return lambda: None

        return make

    monkeypatch.setattr(bench, "_ours", lambda row, x, dispatch: recorder("default_ms" if not dispatch else
                                                                          f"ours-{len(seen)}")())  # fmt: skip
    for name, column in (("_upstream", "upstream"), ("_fla", "fla_ms"), ("_sdpa", "sdpa_ms"), ("_jax", "jax_ms")):
        monkeypatch.setattr(bench, name, recorder(column))
    monkeypatch.setenv("MLSTM_AUTOTUNE_DISPATCH", "1")
    bench.measure(bench.Row("chunkwise", "fw", 1, 2, 64, 16, 16), "cpu", 0.1)
    assert seen["default_ms"] == "0"
    assert seen["jax_ms"] == "1" and all(v == "1" for k, v in seen.items() if k != "default_ms"), seen
    assert os.environ["MLSTM_AUTOTUNE_DISPATCH"] == "1"  # restored
