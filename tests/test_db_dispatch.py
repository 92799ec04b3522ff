"""The tuning database (autotune.db) and the dispatcher (autotune.dispatch), without a GPU."""

from __future__ import annotations

import json
import multiprocessing
import warnings
from pathlib import Path

import pytest
import torch

from autotune import db as tdb
from autotune.dispatch import Dispatcher, Request

GPU, CAP = "NVIDIA H200", (9, 0)


def key(S=8192, BNH=64, structure="chunkwise_fused_fw", dtype="bfloat16", op="chunkwise:exp", DHQK=256, DHHV=512):
    return tdb.Key(op, "fw", dtype, DHQK, DHHV, S, BNH, structure)


def entry(k: tdb.Key, variant="chunkwise_fused_fw__cell-exp_state-input", p50=1.0, **config):
    return tdb.Entry(k, variant, config or {"L": 64}, {"p50_ms": p50, "gpu": GPU})


def req(S=8192, BNH=64, structures=(), op="chunkwise:exp", dtype="bfloat16"):
    return Request(op, "fw", dtype, 256, 512, S, BNH, structures)


def default():
    return "built-in-variant", {"L": 16}


# ---------------------------------------------------------------------------------------------- the database file


def test_round_trip_and_file_name(tmp_path: Path):
    path = tmp_path / tdb.file_name(GPU)
    assert path.name == "NVIDIA_H200.json"
    assert tdb.upsert(path, GPU, CAP, [entry(key()), entry(key(S=2048), p50=0.5)]) == 2
    db = tdb.read(path)
    assert db.gpu == GPU and db.capability == CAP and len(db.entries) == 2
    assert db.entries[key(S=2048)].provenance["p50_ms"] == 0.5
    assert tdb.problems(json.loads(path.read_text())) == []


def test_faster_entry_wins_unless_replace(tmp_path: Path):
    path = tmp_path / "db.json"
    tdb.upsert(path, GPU, CAP, [entry(key(), variant="a", p50=1.0)])
    assert tdb.upsert(path, GPU, CAP, [entry(key(), variant="b", p50=2.0)]) == 0
    assert tdb.read(path).entries[key()].variant == "a"
    assert tdb.upsert(path, GPU, CAP, [entry(key(), variant="c", p50=0.5)]) == 1
    assert tdb.read(path).entries[key()].variant == "c"
    tdb.upsert(path, GPU, CAP, [entry(key(), variant="d", p50=9.0)], replace=True)
    assert tdb.read(path).entries[key()].variant == "d"


def test_entries_of_another_gpu_are_refused(tmp_path: Path):
    path = tmp_path / "db.json"
    tdb.upsert(path, GPU, CAP, [entry(key())])
    with pytest.raises(ValueError, match="H200"):
        tdb.upsert(path, "NVIDIA H100", CAP, [entry(key())])


@pytest.mark.parametrize(
    "content,reason",
    [
        ("{", "unreadable"),
        ('{"schema_version": 1, "gpu": "NVIDIA H200", "capability": [9, 0], "entries": [', "unreadable"),
        ('{"schema_version": 99, "gpu": "x", "capability": [9, 0], "entries": []}', "newer"),
        ('{"schema_version": 1, "gpu": "x", "capability": [9, 0], "entries": [{"key": {"op": 1}}]}', "key"),
        ("[1, 2]", "top level"),
        ('{"gpu": "x"}', "schema_version"),
        (b"\xff\xfe\x00garbage", "unreadable"),
    ],
    ids=["truncated-brace", "truncated-list", "future-schema", "bad-entry", "not-an-object", "no-version", "binary"],
)
def test_bad_files_warn_once_and_are_skipped(tmp_path: Path, content, reason):
    path = tmp_path / "NVIDIA_H200.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tdb.read(path) is None
    assert len(caught) == 1 and issubclass(caught[0].category, tdb.TuningDBWarning)
    assert reason in str(caught[0].message)


def test_a_corrupt_file_is_moved_aside_not_lost(tmp_path: Path):
    path = tmp_path / "db.json"
    path.write_text("{ half a file")
    with pytest.warns(tdb.TuningDBWarning, match="moved"):
        tdb.upsert(path, GPU, CAP, [entry(key())])
    assert (tmp_path / "db.json.corrupt").read_text() == "{ half a file"
    assert len(tdb.read(path).entries) == 1


def _writer(path: str, worker: int, n: int) -> None:
    for i in range(n):
        tdb.upsert(Path(path), GPU, CAP, [entry(key(S=2 ** (i % 8 + 6), BNH=worker * 1000 + i))])


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    """Three processes upsert at once. Spawned, not forked: a test process may hold JAX's threads (the JAX tests),
    and a fork of a multithreaded process can deadlock."""
    path = tmp_path / "db.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(tdb.read(path).entries) == 75


def test_merge_takes_the_faster_entries(tmp_path: Path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    tdb.upsert(a, GPU, CAP, [entry(key(), variant="slow", p50=2.0), entry(key(S=1024), variant="only-a")])
    tdb.upsert(b, GPU, CAP, [entry(key(), variant="fast", p50=1.0), entry(key(S=4096), variant="only-b")])
    assert tdb.merge(a, b) == 2
    merged = tdb.read(a).entries
    assert {k.S: e.variant for k, e in merged.items()} == {8192: "fast", 1024: "only-a", 4096: "only-b"}


@pytest.mark.parametrize("n,expected", [(1, 1), (2, 2), (3, 4), (64, 64), (65, 128), (8192, 8192), (8193, 16384)])
def test_bucket(n, expected):
    assert tdb.bucket(n) == expected


# ------------------------------------------------------------------------------------------------- the dispatcher


def _dispatcher(tmp_path: Path, user=(), packaged=(), gpu=GPU, cap=CAP) -> Dispatcher:
    (tmp_path / "user").mkdir(exist_ok=True)
    (tmp_path / "pkg").mkdir(exist_ok=True)
    if user:
        tdb.upsert(tmp_path / "user" / tdb.file_name(gpu), gpu, cap, user)
    if packaged:
        tdb.upsert(tmp_path / "pkg" / tdb.file_name(gpu), gpu, cap, packaged)
    return Dispatcher(packaged=tmp_path / "pkg", user=tmp_path / "user")


def test_rung_default(tmp_path: Path):
    choice = _dispatcher(tmp_path).choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.config, choice.rung, choice.source) == ("built-in-variant", {"L": 16}, "default",
                                                                           "built-in")  # fmt: skip


def test_rung_exact_prefers_user_database(tmp_path: Path):
    d = _dispatcher(tmp_path, user=[entry(key(), variant="user")], packaged=[entry(key(), variant="pkg")])
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.rung) == ("user", "exact") and "user" in choice.source


def test_exact_in_packaged_beats_nearest_in_user(tmp_path: Path):
    d = _dispatcher(tmp_path, user=[entry(key(S=1024), variant="user-near")], packaged=[entry(key(), variant="pkg")])
    assert d.choose(req(), GPU, CAP, default).variant == "pkg"


def test_rung_nearest_is_deterministic(tmp_path: Path):
    # S=8192 requested; 4096 and 16384 are equally far in log2: the smaller S wins
    d = _dispatcher(tmp_path, packaged=[entry(key(S=16384), variant="big"), entry(key(S=4096), variant="small"),
                                        entry(key(S=65536), variant="far")])  # fmt: skip
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.rung) == ("small", "nearest")


def test_exact_picks_the_fastest_structure_when_any_is_allowed(tmp_path: Path):
    d = _dispatcher(
        tmp_path,
        packaged=[
            entry(key(structure="chunkwise_twopass_fw"), variant="two", p50=2.0),
            entry(key(structure="chunkwise_fused_fw"), variant="one", p50=1.0),
        ],
    )
    assert d.choose(req(), GPU, CAP, default).variant == "one"
    d.reset()
    assert d.choose(req(structures=("chunkwise_twopass_fw",)), GPU, CAP, default).variant == "two"


def test_other_keys_do_not_answer(tmp_path: Path):
    d = _dispatcher(tmp_path, packaged=[entry(key(dtype="float32")), entry(key(op="chunkwise:sig")),
                                        entry(key(DHQK=128))])  # fmt: skip
    assert d.choose(req(), GPU, CAP, default).rung == "default"


def test_rung_same_architecture(tmp_path: Path):
    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="h100")], gpu="NVIDIA H100 80GB HBM3", cap=(9, 0))
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.rung) == ("h100", "same-arch")
    assert d.choose(req(), "NVIDIA A100", (8, 0), default).rung == "default"


def test_override_from_environment(tmp_path: Path, monkeypatch):
    force = {"chunkwise:exp": {"variant": "forced", "config": {"L": 32}}}
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(force))
    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="pkg")])
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.config, choice.rung) == ("forced", {"L": 32}, "override")
    assert d.choose(req(op="parallel:exp"), GPU, CAP, default).rung == "default"  # other ops are not forced


@pytest.mark.parametrize(
    "value,reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"chunkwise:exp/bw": {"variant": "v"}}', "unknown key 'chunkwise:exp/bw'"),
        ('{"chunkwise:exp": "v"}', 'must be an object with a "variant" string'),
        ('{"chunkwise:exp": {"config": {"L": 32}}}', 'must be an object with a "variant" string'),
        ('{"chunkwise:exp": {"variant": "v", "configs": {"L": 32}}}', "unknown fields \\['configs'\\]"),
        ('{"chunkwise:exp": {"variant": "v", "config": [32]}}', 'config"\\] must be an object'),
    ],
    ids=["not-json", "not-an-object", "unknown-key", "value-a-string", "no-variant", "misspelt-field", "config-list"],
)
def test_malformed_override_raises_at_every_call(tmp_path: Path, monkeypatch, value, reason):
    """A malformed MLSTM_AUTOTUNE_FORCE is an error naming it, at every call until it is fixed: never a silent (or
    merely warned) fallback to the database or the default."""
    from autotune.dispatch import OverrideError

    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="pkg")])
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", value)
    for _ in range(2):
        with pytest.raises(OverrideError, match=reason) as err:
            d.choose(req(), GPU, CAP, default)
        assert "MLSTM_AUTOTUNE_FORCE" in str(err.value) and isinstance(err.value, ValueError)
    monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE")
    assert d.choose(req(), GPU, CAP, default).variant == "pkg"


def test_override_set_changed_or_removed_after_a_first_call_applies(tmp_path: Path, monkeypatch):
    """The dispatcher memoises its answers, but not across a change of MLSTM_AUTOTUNE_FORCE: a value set (or changed,
    or removed) with os.environ after the first call applies from the next call."""
    import os

    monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE", raising=False)
    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="pkg")])
    assert d.choose(req(), GPU, CAP, default).variant == "pkg"
    forced = {"chunkwise:exp": {"variant": "forced", "config": {"L": 32}}}
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(forced))
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.config, choice.rung) == ("forced", {"L": 32}, "override")
    os.environ["MLSTM_AUTOTUNE_FORCE"] = json.dumps({"chunkwise:exp": {"variant": "other", "config": {"L": 16}}})
    choice = d.choose(req(), GPU, CAP, default)
    assert (choice.variant, choice.config) == ("other", {"L": 16})
    assert d.choose(req(op="parallel:exp"), GPU, CAP, default).rung == "default"  # other ops stay as they were
    del os.environ["MLSTM_AUTOTUNE_FORCE"]
    assert d.choose(req(), GPU, CAP, default).rung == "exact"


def test_an_invalid_forced_choice_raises_an_invalid_entry_warns(tmp_path: Path, monkeypatch):
    """``validate`` failing on a database entry falls back to the default with a warning (a tuned entry gone stale);
    failing on a forced choice raises, naming MLSTM_AUTOTUNE_FORCE, its key and the reason."""
    from autotune.dispatch import OverrideError

    def validate(choice):
        if choice.config.get("L") == 48:
            raise ValueError("L must be a power of two")

    monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE", raising=False)
    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="pkg", L=48)])
    with pytest.warns(UserWarning, match="using the built-in default"):
        assert d.choose(req(), GPU, CAP, default, validate).rung == "default"
    forced = {"chunkwise:exp": {"variant": "forced", "config": {"L": 48}}}
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(forced))
    with pytest.raises(OverrideError, match=r"MLSTM_AUTOTUNE_FORCE\['chunkwise:exp'\] forces forced .*power of two"):
        d.choose(req(), GPU, CAP, default, validate)


def test_later_calls_do_not_read_files(tmp_path: Path):
    d = _dispatcher(tmp_path, packaged=[entry(key(), variant="pkg")])
    first = d.choose(req(), GPU, CAP, default)
    for p in (tmp_path / "pkg").iterdir():
        p.unlink()  # a later call must not look at the files again
    assert d.choose(req(), GPU, CAP, default) is first
    d.reset()
    assert d.choose(req(), GPU, CAP, default).rung == "default"


def test_corrupt_database_never_breaks_a_lookup(tmp_path: Path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "NVIDIA_H200.json").write_text('{"schema_version": 1, "gpu": "NVIDIA H200", "entr')
    d = Dispatcher(packaged=tmp_path / "pkg", user=tmp_path / "none")
    with pytest.warns(tdb.TuningDBWarning):
        assert d.choose(req(), GPU, CAP, default).rung == "default"


def test_show_names_the_rung_and_prints_the_source(tmp_path: Path):
    import os
    import subprocess
    import sys

    tdb.upsert(tmp_path / tdb.file_name(GPU), GPU, CAP, [tdb.Entry(
        tdb.Key("chunkwise:exp", "fw", "bfloat16", 256, 512, 8192, 64, "chunkwise_fused_fw"),
        "chunkwise_fused_fw__cell-exp_state-input", {"chunk": 64, "dhhv_tile": 32, "num_warps": 8, "num_stages": 2},
        {"p50_ms": 1.0})])  # fmt: skip
    env = dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path))
    cmd = [sys.executable, "-m", "autotune", "show", "--gpu", GPU, "--capability", "9.0", "--B", "8", "--NH", "8",
           "--S", "8000", "--DHQK", "256", "--DHHV", "512"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "rung exact" in out.stdout and "chunkwise_fused_fw__cell-exp_state-input" in out.stdout
    assert "'num_stages': 2" in out.stdout and "def chunkwise_fused_fw_kernel(" in out.stdout
    other = subprocess.run(cmd[:5] + ["NVIDIA A100-SXM4-80GB", "--capability", "8.0", "--no-source"],
                           capture_output=True, text=True, env=env)  # fmt: skip
    assert other.returncode == 0 and "rung default" in other.stdout and "def " not in other.stdout


def test_db_command(tmp_path: Path):
    import os
    import subprocess
    import sys

    def db(*args):
        env = dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path / "user"))
        return subprocess.run([sys.executable, "-m", "autotune", "db", *args], capture_output=True, text=True, env=env)

    src = tmp_path / "from_elsewhere.json"
    tdb.upsert(src, GPU, CAP, [entry(key(), variant="x")])
    assert db("validate", str(src)).returncode == 0
    imported = db("import", str(src))
    assert imported.returncode == 0 and "1 entry" in imported.stdout
    assert tdb.read(tmp_path / "user" / "NVIDIA_H200.json").entries[key()].variant == "x"
    listed = db("list", "-v")
    assert listed.returncode == 0 and "1 entries, NVIDIA H200" in listed.stdout and "-> x" in listed.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 9, "gpu": "g", "capability": [9, 0], "entries": []}')
    out = db("validate", str(bad))
    assert out.returncode == 1 and "newer" in out.stdout
    assert db("import", str(bad)).returncode == 1
    exported = db("export", str(tmp_path / "out"))
    assert exported.returncode == 0 and (tmp_path / "out" / "NVIDIA_H200.json").exists()


def test_report_writes_a_table_and_a_png(tmp_path: Path):
    import struct
    import zlib

    import numpy as np

    from autotune.report import BLUE, GREY, report

    path = tmp_path / "db.json"
    e1 = entry(key(), variant="fast", p50=1.0)
    e1.provenance.update(default_ms=2.0, p20_ms=0.9, p80_ms=1.1, error_vs_reference=1e-3, shape=[8, 8, 8192, 256, 512])
    e2 = entry(key(S=2048), variant="same", p50=3.0)
    e2.provenance.update(default_ms=3.0, p20_ms=2.9, p80_ms=3.1, error_vs_reference=2e-3, shape=[32, 8, 2048, 256, 512])
    tdb.upsert(path, GPU, CAP, [e1, e2])
    md, png, text = report(path, tmp_path / "out")
    assert md.read_text() == text
    assert "| 2.00x |" in text and "| 1.00x |" in text and "`fast`" in text and "8, 8, 8192, 256, 512" in text
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    raw = np.frombuffer(zlib.decompress(data[idat + 4 : idat + 4 + length]), dtype=np.uint8).reshape(h, 1 + 3 * w)
    pixels = raw[:, 1:].reshape(h, w, 3)
    blue = (pixels == BLUE).all(-1).sum(-1)  # blue pixels per image row
    grey = (pixels == GREY).all(-1).sum(-1)
    # bars share one ms scale: S=2048 has tuned = default = 3.0 ms (the longest bars, equal); S=8192 has tuned
    # 1.0 ms and default 2.0 ms, so its grey bar is twice its blue bar and its blue bar a third of the longest
    longest, short_blue, short_grey = blue.max(), blue[blue > 0].min(), grey[grey > 0].min()
    assert grey.max() == longest
    assert abs(short_grey - 2 * short_blue) <= 2 and abs(3 * short_blue - longest) <= 3


def test_every_shipped_entry_is_a_point_the_search_space_allows():
    """A rule added to the space (a configuration found to miscompute on a GPU) must not leave such an entry in a
    shipped database: the dispatcher would run it."""
    from autotune import paths, space
    from autotune.variants import by_name

    files = sorted(paths.tuning_db_dir().glob("*.json"))
    assert files
    for path in files:
        db = tdb.read(path)
        assert db is not None and db.entries, path
        for e in db.entries.values():
            variant = by_name(e.variant)
            dtype_bytes = torch.finfo(getattr(torch, e.key.dtype)).bits // 8
            reason = space.invalid(variant, space.upgrade(variant, e.config), e.key.DHQK, e.key.DHHV, dtype_bytes,
                                   space.H100_LIMITS)  # fmt: skip
            assert reason is None, f"{path.name} {e.key}: {reason}"


# ------------------------------------------------------ MLSTM_AUTOTUNE_FORCE through the Triton entries (interpreter)

_SPLIT_BW = "chunkwise_bw__cell-exp_kernels-split"
_FUSED_BW = "chunkwise_bw__cell-exp_kernels-fused"


def _bw_config(variant=_SPLIT_BW, L=32, states="recompute", tile=16, **changes):
    from helpers import chunkwise_bw_config

    from autotune.variants import by_name

    return {**chunkwise_bw_config(by_name(variant), 16, 16, L, states, tile), **changes}


def _force(monkeypatch, **forced):
    """Set MLSTM_AUTOTUNE_FORCE (in this process, after whatever calls came before) to {key: (variant, config)}."""
    value = {k.replace("_fwbw", ":exp/fwbw").replace("_fw", ":exp"): {"variant": v, "config": c}
             for k, (v, c) in forced.items()}  # fmt: skip
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(value))


@pytest.fixture
def launches(tmp_path, monkeypatch):
    """What every chunkwise forward and backward launch ran, with a fresh dispatcher and no user database:
    {"fw": [(variant, config)], "bw": [(variant, config, whether it reused the forward's states)]}"""
    from autotune.dispatch import dispatcher
    from autotune.launch import chunkwise, chunkwise_bw

    for name in ("MLSTM_AUTOTUNE_FORCE", "MLSTM_AUTOTUNE_BACKWARD_STATES", "MLSTM_AUTOTUNE_DISPATCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLSTM_AUTOTUNE_DB", str(tmp_path))
    dispatcher().reset()
    seen = {"fw": [], "bw": []}
    real_fw, real_bw = chunkwise.chunkwise_fw, chunkwise_bw.chunkwise_bw

    def fw(*args, **kwargs):
        seen["fw"].append((kwargs["variant"].name, dict(kwargs["config"])))
        return real_fw(*args, **kwargs)

    def bw(*args, **kwargs):
        seen["bw"].append((kwargs["variant"].name, dict(kwargs["config"]), kwargs["borders"] is not None))
        return real_bw(*args, **kwargs)

    monkeypatch.setattr(chunkwise, "chunkwise_fw", fw)
    monkeypatch.setattr(chunkwise_bw, "chunkwise_bw", bw)
    yield seen
    monkeypatch.undo()
    dispatcher().reset()


def _training_step(name, seen, S=64, chunk_size=32, D=16):
    """One forward and backward of ``name`` (fp32, B=1, NH=2) on fixed inputs: (gradients, backward launches)."""
    from autotune.reference import random_inputs
    from autotune.torch import get_mlstm_kernel

    seen["fw"].clear()
    seen["bw"].clear()
    x = random_inputs(1, 2, S, D, D, dtype=torch.float32, generator=torch.Generator().manual_seed(S))
    xk = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    h = get_mlstm_kernel(name)(**xk, chunk_size=chunk_size)
    weights = torch.randn(h.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((h * weights).sum(), list(xk.values()))
    return grads, [(variant, config["chunk"], config["states"], reused) for variant, config, reused in seen["bw"]]


def _close(a, b):
    return all(float((x - y).norm() / y.norm()) < 1e-4 for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["chunkwise--triton_auto", "chunkwise--triton_xl_chunk"])
def test_forced_backward_set_mid_process_applies_from_the_next_step(name, launches, monkeypatch):
    """Forcing the "fwbw" key after a first training step takes effect although the entries memoise their answer
    per shape: a value set, changed or removed between steps runs from the next step; the gradients stay the same
    function."""
    grads, used = _training_step(name, launches)
    assert used == [(_FUSED_BW, 64, "recompute", False)]  # the built-in default
    _force(monkeypatch, chunkwise_fwbw=(_SPLIT_BW, _bw_config(L=32, states="reuse")))
    forced, used = _training_step(name, launches)
    assert used == [(_SPLIT_BW, 32, "reuse", True)]  # the two-pass forward stored its states every 32 tokens
    assert _close(forced, grads)
    _force(monkeypatch, chunkwise_fwbw=(_FUSED_BW, _bw_config(_FUSED_BW, L=16, num_warps=8)))
    forced, used = _training_step(name, launches)
    assert used == [(_FUSED_BW, 16, "recompute", False)] and _close(forced, grads)
    monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE")
    assert _training_step(name, launches)[1] == [(_FUSED_BW, 64, "recompute", False)]


def test_forced_forward_set_mid_process_applies_from_the_next_call(launches, monkeypatch):
    from autotune.torch import get_mlstm_kernel

    x = {k: v for k, v in zip("qkvif", (torch.randn(1, 2, 64, 16),) * 3 + (torch.randn(1, 2, 64),) * 2)}
    get_mlstm_kernel("chunkwise--triton_auto")(**x, chunk_size=32)
    fused = "chunkwise_fused_fw__cell-exp_state-float32"
    config = {"chunk": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}
    _force(monkeypatch, chunkwise_fw=(fused, config))
    get_mlstm_kernel("chunkwise--triton_auto")(**x, chunk_size=32)
    assert [variant for variant, _ in launches["fw"]] == ["chunkwise_twopass_fw__cell-exp_state-input", fused]
    assert launches["fw"][1][1] == config


@pytest.mark.parametrize("name", ["chunkwise--triton_xl_chunk", "chunkwise--triton_fused"])
def test_forced_reusing_backward_at_another_chunk_than_the_forward(name, launches, monkeypatch):
    """A backward forced to reuse the forward's states at chunks of 32 while the entry's forward runs chunks of 64, S
    not a multiple of either: a training step's forward (launch.chunkwise.training_forward, whatever structure the
    entry runs for inference, the fused one included) stores them every 32 tokens for it."""
    grads, _ = _training_step(name, launches, S=130, chunk_size=64)
    _force(monkeypatch, chunkwise_fwbw=(_SPLIT_BW, _bw_config(L=32, states="reuse")))
    forced, used = _training_step(name, launches, S=130, chunk_size=64)
    assert used == [(_SPLIT_BW, 32, "reuse", True)]
    assert _close(forced, grads)


def test_forced_backward_set_before_the_process_starts():
    import os
    import subprocess
    import sys

    force = {"chunkwise:exp/fwbw": {"variant": _SPLIT_BW, "config": _bw_config(L=32, states="reuse")}}
    script = """if True:
        import json, torch
        from autotune.launch import chunkwise_bw
        from autotune.torch import get_mlstm_kernel
        used, real = [], chunkwise_bw.chunkwise_bw
        def spy(*args, **kwargs):
            used.append((kwargs["variant"].name, kwargs["config"]["chunk"], kwargs["borders"] is not None))
            return real(*args, **kwargs)
        chunkwise_bw.chunkwise_bw = spy
        x = [torch.randn(1, 2, 64, 16, requires_grad=True) for _ in range(3)]
        x += [torch.randn(1, 2, 64, requires_grad=True) for _ in range(2)]
        get_mlstm_kernel("chunkwise--triton_auto")(*x, chunk_size=64).sum().backward()
        print(json.dumps(used))
    """
    env = dict(os.environ, MLSTM_AUTOTUNE_FORCE=json.dumps(force), TRITON_INTERPRET="1")
    env.pop("MLSTM_AUTOTUNE_DISPATCH", None)
    env.pop("MLSTM_AUTOTUNE_BACKWARD_STATES", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[_SPLIT_BW, 32, True]]


@pytest.mark.parametrize(
    "key,variant,config,reason",
    [
        ("fwbw", "chunkwise_bw__cell-exp_kernels-nope", {}, "unknown variant 'chunkwise_bw__cell-exp_kernels-nope'; "
         f"these can run it: {_FUSED_BW}, {_SPLIT_BW}"),
        ("fwbw", _SPLIT_BW, {"chunk": 32, "states": "reuse"}, r"missing launch parameters \['dhqk_tile', 'dhhv_tile', "
         r"'dv_dhhv_tile', 'states_dhqk_tile', 'states_dhhv_tile', 'num_warps', 'states_warps', 'num_stages'\]"
         r".*the variant's default for these head dims: \{"),
        ("fwbw", _SPLIT_BW, dict(_bw_config(), state="reuse"), r"unknown launch parameters \['state'\]"),
        ("fwbw", _SPLIT_BW, _bw_config(L=48), "chunk must be a power of two"),
        ("fwbw", _SPLIT_BW, {**_bw_config(), "BV": 16}, r"dhhv_tile given twice \(as dhhv_tile and its former "
         r"name BV\)"),
        ("fwbw", _SPLIT_BW, _bw_config(num_warps=3), "num_warps must be a power of two"),
        ("fwbw", _SPLIT_BW, _bw_config(states_every=2), r"states_every=2 of chunkwise_bw.py.j2 is retired"),
        ("fwbw", "chunkwise_bw__cell-sig_kernels-split", _bw_config(), "computes the sig cell, not exp"),
        ("fwbw", "chunkwise_fused_fw__cell-exp_state-input", {"chunk": 32, "dhhv_tile": 16, "num_warps": 4,
                                                              "num_stages": 1},
         r"not of the structures \('chunkwise_bw',\)"),
        ("fw", "chunkwise_fused_fw__cell-exp_state-input", {"chunk": 32, "dhhv_tile": 16, "num_warps": 4,
                                                            "num_stages": 1},
         r"not of the structures \('chunkwise_twopass_fw',\)"),  # triton_xl_chunk is two-pass only
    ],
    ids=["unknown-variant", "partial-config", "misspelt-parameter", "chunk-48", "old-and-new-name", "warps-3",
         "retired-states_every-2", "other-cell", "forward-as-backward", "other-structure"],
)  # fmt: skip
def test_invalid_forced_choice_fails_loudly_before_any_launch(key, variant, config, reason, launches, monkeypatch):
    """An error naming the forced key at every call, not the built-in default with a warning a training log buries
    (for another cell: another function run), nor a crash inside the launcher."""
    from autotune.dispatch import OverrideError

    _force(monkeypatch, **{f"chunkwise_{key}": (variant, config)})
    for _ in range(2):  # not only the first call
        with pytest.raises(OverrideError, match=reason) as err:
            _training_step("chunkwise--triton_xl_chunk", launches)
        assert f"MLSTM_AUTOTUNE_FORCE['chunkwise:exp{'/fwbw' if key == 'fwbw' else ''}']" in str(err.value)
        assert launches == {"fw": [], "bw": []}


def test_explain_follows_the_variable_set_mid_process(launches, monkeypatch):
    """`mlstm-tune show` (triton_kernels.explain) answers as a call would, after the variable changes too."""
    from autotune.dispatch import OverrideError
    from autotune.torch.triton_kernels import explain

    def show():
        return explain("chunkwise--triton_auto", dtype=torch.float32, B=1, NH=2, S=64, DHQK=16, DHHV=16,
                       gpu="cpu-interpreter", capability=(0, 0), direction="fwbw")[1]  # fmt: skip

    assert show().rung == "default"
    _force(monkeypatch, chunkwise_fwbw=(_SPLIT_BW, _bw_config(L=32)))
    assert (show().rung, show().variant, show().config["chunk"]) == ("override", _SPLIT_BW, 32)
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", "{oops")
    with pytest.raises(OverrideError, match="not valid JSON"):
        show()
