"""On-disk size of what a requirement pulls into an environment: the installed distributions it
needs (its dependency closure, extras and markers evaluated), summed over the files each one's
RECORD lists. Run it with the environment's own interpreter:

    VENV/bin/python scripts/install_size.py 'recblr'             # what the base install needs
    .venv/bin/python scripts/install_size.py 'recblr[train,gpu]' # the training + GPU stack
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata
from pathlib import Path


def _name(req: str) -> tuple[str, set[str], str]:
    """(normalised name, extras, marker) of a requirement string."""
    m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\[[^\]]*\])?([^;]*)(;.*)?$", req)
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    extras = {e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip()}
    return name, extras, (m.group(4) or "")[1:].strip()


def _marker_ok(marker: str, extra: str | None) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # a bare venv: pip carries its own copy
        from pip._vendor.packaging.markers import Marker

    return Marker(marker).evaluate({"extra": extra or ""})


def closure(roots: list[str]) -> dict[str, int]:
    """Installed size in bytes of every distribution `roots` need, by name."""
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d for d in metadata.distributions()}
    sizes: dict[str, int] = {}
    todo = [_name(r)[:2] for r in roots]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extras = todo.pop()
        dist = installed.get(name)
        if dist is None:
            continue
        if name not in sizes:
            base = Path(dist.locate_file(""))
            sizes[name] = sum((base / f).stat().st_size for f in dist.files or []
                              if (base / f).is_file())
        for extra in [None, *sorted(extras)]:
            if (name, extra or "") in seen:
                continue
            seen.add((name, extra or ""))
            for req in dist.requires or []:
                dep, dep_extras, marker = _name(req)
                if _marker_ok(marker, extra):
                    todo.append((dep, dep_extras))
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("requirement", nargs="+")
    args = p.parse_args()
    sizes = closure(args.requirement)
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    print(json.dumps({"requirement": args.requirement, "distributions": len(sizes),
                      "mb": round(sum(sizes.values()) / 1e6, 1),
                      "largest_mb": {k: round(v / 1e6, 1) for k, v in top}}, indent=1))


if __name__ == "__main__":
    main()
