"""``mlstm-tune report``: tuned against default times from a tuning database, as a markdown table and a PNG plot.

The plot needs no plotting library (none is a dependency): a horizontal bar pair per entry (default in grey,
tuned in blue, the same millisecond scale), numbered like the table rows, with the speed-up printed beside it in a
built-in 5x7 pixel font, written as PNG with zlib.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from . import db as tdb

# 5x7 glyphs of the characters the plot prints ('#' = ink)
_FONT = {
    "0": [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    "1": ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "2": [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    "3": ["####.", "....#", "....#", ".###.", "....#", "....#", "####."],
    "4": ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    "5": ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    "6": [".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."],
    "7": ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    "8": [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    "9": [".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."],
    ".": [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
    "x": [".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    "#": [".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."],
    " ": ["....."] * 7,
}
GREY, BLUE, BLACK, WHITE = (170, 170, 170), (40, 100, 200), (0, 0, 0), (255, 255, 255)


def rows(database: tdb.TuningDB) -> list[dict]:
    out = []
    for key in sorted(database.entries):
        e = database.entries[key]
        p = e.provenance
        out.append({"op": key.op, "direction": key.direction, "dtype": key.dtype, "shape": p.get("shape"),
                    "variant": e.variant, "config": e.config, "p50": p.get("p50_ms"), "p20": p.get("p20_ms"),
                    "p80": p.get("p80_ms"), "default": p.get("default_ms"), "error": p.get("error_vs_reference"),
                    "date": p.get("date", ""),
                    "versions": f"torch {p.get('torch', '?')}, triton {p.get('triton', '?')}",
                    "timing": p.get("timing", "gpu")})  # fmt: skip
    return out


def markdown(database: tdb.TuningDB, table: list[dict]) -> str:
    lines = [
        f"Tuning database of {database.gpu} (compute capability {database.capability[0]}.{database.capability[1]})",
        "",
        "| # | op | dtype | B, NH, S, DHQK, DHHV | tuned ms (p20-p80) | default ms | speed-up | winner "
        "| error vs ref | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(table, 1):
        speedup = r["default"] / r["p50"] if r["p50"] and r["default"] else float("nan")
        shape = ", ".join(map(str, r["shape"])) if r["shape"] else "?"
        lines.append(
            f"| {n} | {r['op']} {r['direction']} | {r['dtype']} | {shape} | {r['p50']:.3f} ({r['p20']:.3f}-"
            f"{r['p80']:.3f}) | {r['default']:.3f} | {speedup:.2f}x | `{r['variant']}` {r['config']} | "
            f"{r['error']:.1e} | {r['date'][:10]}, {r['versions']}, {r['timing']} |"
        )
    return "\n".join(lines) + "\n"


def _text(img: np.ndarray, x: int, y: int, s: str, scale: int = 2) -> None:
    for ch in s:
        glyph = _FONT.get(ch, _FONT[" "])
        for gy, line in enumerate(glyph):
            for gx, c in enumerate(line):
                if c == "#":
                    img[y + gy * scale : y + (gy + 1) * scale, x + gx * scale : x + (gx + 1) * scale] = BLACK
        x += 6 * scale


def plot(table: list[dict]) -> np.ndarray:
    """RGB image (H, W, 3) uint8: per row, '#n', the default bar, the tuned bar and 'N.NNx'."""
    bar, gap, left, width = 14, 16, 70, 520
    height = max(1, len(table)) * (2 * bar + gap) + gap
    img = np.full((height, left + width + 110, 3), WHITE, dtype=np.uint8)
    longest = max([r["default"] or 0 for r in table] + [r["p50"] or 0 for r in table] + [1e-9])
    for n, r in enumerate(table):
        y = gap + n * (2 * bar + gap)
        _text(img, 6, y + bar // 2, f"#{n + 1}")
        for k, (value, colour) in enumerate(((r["default"], GREY), (r["p50"], BLUE))):
            length = int(width * (value or 0) / longest)
            img[y + k * bar : y + (k + 1) * bar - 2, left : left + length] = colour
        speedup = r["default"] / r["p50"] if r["p50"] and r["default"] else 0.0
        _text(img, left + width + 10, y + bar // 2, f"{speedup:.2f}x")
    return img


def write_png(path: Path, img: np.ndarray) -> None:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def report(db_file: Path, out_dir: Path) -> tuple[Path, Path, str]:
    """Write <out_dir>/<GPU>-report.md and -report.png for the database in ``db_file``; return both paths and the
    markdown."""
    database = tdb.read(db_file)
    if database is None:
        raise ValueError(f"{db_file} is not a usable tuning database")
    table = rows(database)
    stem = tdb.file_name(database.gpu).removesuffix(".json")
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / f"{stem}-report.md", out_dir / f"{stem}-report.png"
    text = markdown(database, table) + f"\n![tuned (blue) against default (grey), ms]({png.name})\n"
    md.write_text(text)
    write_png(png, plot(table))
    return md, png, text
