"""Render templates/*.py.j2 into generated/: one module per structural variant, plus MANIFEST.json.

Deterministic: the same templates and catalogue give byte-identical files. Each file starts with a banner naming its
template, the template hash (over the template and the shared partials ``_*.j2`` it may include), its structural
parameters and the command that regenerates it. ``render(check=True)`` writes nothing and lists what is stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jinja2

from . import paths
from .variants import VARIANTS, Variant

REGENERATE = "mlstm-tune render   (or: python -m autotune render)"


def _environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def template_hash(templates: Path, template: str) -> str:
    """sha256 (first 16 hex digits) of the template and every shared partial (``_*.j2``) in the folder."""
    h = hashlib.sha256()
    for path in [templates / template, *sorted(templates.glob("_*.j2"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def render_variant(env: jinja2.Environment, templates: Path, variant: Variant) -> str:
    t_hash = template_hash(templates, variant.template)
    params = ", ".join(f"{k}={v}" for k, v in sorted(variant.params.items())) or "(none)"
    banner = (
        "# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.\n"
        f"# template:        {variant.template}\n"
        f"# template hash:   {t_hash}\n"
        f"# parameters:      {params}\n"
        f"# regenerate with: {REGENERATE}\n"
    )
    body = env.get_template(variant.template).render(**variant.params, variant_name=variant.name)
    return banner + body


def rendered_files(templates: Path | None = None) -> dict[str, str]:
    """File name -> content for every variant, and MANIFEST.json."""
    templates = templates or paths.templates_dir()
    env = _environment(templates)
    files, manifest = {}, {}
    for variant in VARIANTS:
        fname = f"{variant.name}.py"
        if fname in files:
            raise ValueError(f"two variants render to {fname}")
        files[fname] = render_variant(env, templates, variant)
        manifest[fname] = {
            "family": variant.family,
            "template": variant.template,
            "template_hash": template_hash(templates, variant.template),
            "params": variant.params,
        }
    files["MANIFEST.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return files


def stale_files(out_dir: Path | None = None, templates: Path | None = None) -> list[str]:
    """Names of files in ``out_dir`` that differ from a fresh render, are missing, or are left over."""
    out_dir = out_dir or paths.generated_dir()
    expected = rendered_files(templates)
    present = {p.name for p in out_dir.glob("*.py")} | (
        {"MANIFEST.json"} if (out_dir / "MANIFEST.json").exists() else set()
    )
    stale = [n for n, text in expected.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != text]
    stale += sorted(present - set(expected))
    return sorted(stale)


def render(out_dir: Path | None = None, templates: Path | None = None) -> list[str]:
    """Write every generated file that changed and delete generated modules no variant produces any more.
    Returns the names written or removed."""
    out_dir = out_dir or paths.generated_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = rendered_files(templates)
    changed = []
    for name, text in expected.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    for path in sorted(out_dir.glob("*.py")):
        if path.name not in expected:
            path.unlink()
            changed.append(path.name)
    return changed
