"""mkdocs hooks: pages generated at build time, so they cannot drift from their sources.

- configuration.md: every section and field of lema's settings (`lema.core.config.LemaConfig`), with its type,
  default, limits, description and environment variable.
- benchmarks.md: bench/RESULTS.md (and the figures it shows from bench/results/).
- kubernetes.md: deploy/README.md.
- index.md: the repository's README.md, its links turned into the site's pages (the README links the sources on a
  code host: docs/*.md, bench/RESULTS.md, lema/core/config.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent.parent


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation)
    text = re.sub(r"\b(typing|pathlib|collections\.abc|lema\.core\.[\w.]+)\.", "", text)
    return text.replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def _limits(field) -> str:
    found = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length"),
                             ("max_length", "max length")):
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_page() -> str:
    from lema.core.config import LemaConfig

    lines = ["# Configuration reference", "",
             "Generated from lema's settings models (`lema/core/config.py`) when the site is built. lema reads, in",
             "order: the defaults below, a YAML file (`--config PATH` or `$LEMA_CONFIG`; `deploy/lema.yaml` is the",
             "example `lema up` uses) and `LEMA_<SECTION>__<FIELD>` environment variables (a list or a mapping as",
             "JSON). An unknown section or field, or a value out of its limits, is refused with its name.", ""]
    for section, section_field in LemaConfig.model_fields.items():
        model = section_field.annotation
        lines += [f"## `{section}`", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!!")):
            lines += [doc.split("\n\n")[0].replace("\n", " "), ""]
        lines += ["| field | type | default | limits | environment | description |", "|---|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            env = f"LEMA_{section.upper()}__{name.upper()}"
            lines.append(f"| `{name}` | `{_cell(_type_name(field.annotation))}` | `{_cell(_default(field))}` | "
                         f"{_cell(_limits(field))} | `{env}` | {_cell(field.description or '')} |")
        lines.append("")
    return "\n".join(lines)


def _from_repo(relative: str, title: str | None = None) -> str:
    text = (REPO / relative).read_text()
    note = f"*This page is `{relative}` from the repository, rendered.*\n\n"
    if title:
        return f"# {title}\n\n{note}{text}"
    first, _, rest = text.partition("\n")
    return f"{first}\n\n{note}{rest}"


README_LINKS = {"](docs/": "](", "](bench/RESULTS.md)": "](benchmarks.md)",
                "](lema/core/config.py)": "](configuration.md)"}


def index_page() -> str:
    text = (REPO / "README.md").read_text()
    for source, site in README_LINKS.items():
        text = text.replace(source, site)
    return text


def on_files(files, config):
    generated = {
        "index.md": index_page(),
        "configuration.md": configuration_page(),
        "benchmarks.md": _from_repo("bench/RESULTS.md"),
        "kubernetes.md": _from_repo("deploy/README.md"),
    }
    for name, content in generated.items():
        files.append(File.generated(config, name, content=content))
    for figure in sorted((REPO / "bench" / "results").glob("*.png")):
        files.append(File.generated(config, f"results/{figure.name}", content=figure.read_bytes()))
    return files
