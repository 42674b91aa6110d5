"""On-disk size of the serving install against the full one, written to
benchmarks/results/install_size.json. Size of an install: the installed distributions its
requirement needs (dependency closure, extras and markers evaluated), summed over the files
each one's RECORD lists. A requirement that applies here but is not installed is not skipped
quietly: it is printed as a warning and listed under "missing".

    .venv/bin/python scripts/install_size.py   # builds the serving venv itself (needs the registry)

The serving install is the wheel with no extras in a fresh venv (what tests/test_install.py
builds); the full one is `recblr[train,gpu]` as the development environment (--full-env) has it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import provenance, write_result  # noqa: E402

MB = 1e6


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(req: str) -> tuple[str, set[str], str]:
    """(normalised name, extras, marker) of a requirement string."""
    m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\[[^\]]*\])?([^;]*)(;.*)?$", req)
    extras = {e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip()}
    return _norm(m.group(1)), extras, (m.group(4) or "")[1:].strip()


def _marker_ok(marker: str, extra: str | None) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    return Marker(marker).evaluate({"extra": extra or ""})


def site_dirs(python: Path) -> list[str]:
    """The site-packages folders of the environment `python` belongs to."""
    out = subprocess.run([str(python), "-c", "import sysconfig as s; p = s.get_paths(); "
                          "print(p['purelib']); print(p['platlib'])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(set(out))


def closure(roots: list[str], path: list[str]) -> tuple[dict[str, tuple[str, int]], list[dict]]:
    """({name: (version, bytes)} of every installed distribution `roots` need, the requirements
    that apply on this platform but have no installed distribution in `path`)."""
    installed = {_norm(d.metadata["Name"]): d for d in metadata.distributions(path=path)}
    sizes: dict[str, tuple[str, int]] = {}
    missing: list[dict] = []
    todo = [(*_parse(r)[:2], r, "(root)") for r in roots]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extras, req, by = todo.pop()
        dist = installed.get(name)
        if dist is None:
            if not any(m["name"] == name for m in missing):
                missing.append({"name": name, "requirement": req, "required_by": by})
            continue
        if name not in sizes:
            base = Path(dist.locate_file(""))
            sizes[name] = (dist.version, sum((base / f).stat().st_size for f in dist.files or []
                                             if (base / f).is_file()))
        for extra in [None, *sorted(extras)]:
            if (name, extra or "") in seen:
                continue
            seen.add((name, extra or ""))
            for dep in dist.requires or []:
                dep_name, dep_extras, marker = _parse(dep)
                if _marker_ok(marker, extra):
                    todo.append((dep_name, dep_extras, dep, name + (f"[{extra}]" if extra else "")))
    return sizes, missing


def build_wheel(work: Path, timeout: float | None = None) -> Path:
    """The recblr wheel of this checkout, built in `work` (also used by tests/test_install.py)."""
    src = work / "src"  # build from a copy: the build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("recblr", "kernels", "export", "runtime"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-q", "--no-deps",
                    "-w", str(work / "dist"), str(src)], check=True, timeout=timeout)
    return next((work / "dist").glob("recblr-*.whl"))


def serving_venv(work: Path) -> Path:
    """A fresh venv holding the recblr wheel built from this checkout, installed with no extras."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheel = build_wheel(work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel)], check=True)
    return venv


def wheel_size(requirement: str, work: Path) -> dict:
    """The wheel pip would install for `requirement` here: its file size and its files' unpacked
    size (what installing it would add, its own dependencies aside)."""
    dest = work / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement], check=True)
    (whl,) = dest.glob("*.whl")
    with zipfile.ZipFile(whl) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
    return {"file": whl.name, "compressed_mb": round(whl.stat().st_size / MB, 1),
            "unpacked_mb": round(unpacked / MB, 1)}


def measure(label: str, requirement: str, python: Path, where: str) -> dict:
    sizes, missing = closure([requirement], site_dirs(python))
    for m in missing:
        print(f"WARNING: {where}: {m['requirement']} (needed by {m['required_by']}) is not installed; "
              "its size is NOT in this install's total", file=sys.stderr)
    total = sum(b for _, b in sizes.values())
    return {
        "label": label,
        "requirement": requirement,
        "environment": where,
        "distributions": len(sizes),
        "mb": round(total / MB, 1),
        "missing": missing,
        "per_distribution_mb": {f"{k} {v}": round(b / MB, 1)
                                for k, (v, b) in sorted(sizes.items(), key=lambda kv: -kv[1][1])},
    }


def _full_label(full: dict, python: Path) -> str:
    """What the full install holds beyond the base one, as measured (not as the extras list it)."""
    name, extras, _ = _parse(full["requirement"])
    root = {_norm(d.metadata["Name"]): d for d in metadata.distributions(path=site_dirs(python))}[name]
    by_name = {k.split(" ")[0]: k for k in full["per_distribution_mb"]}
    added = []
    for extra in sorted(extras):
        for dep in root.requires or []:
            dep_name, _, marker = _parse(dep)
            if marker and _marker_ok(marker, extra) and not _marker_ok(marker, None) and dep_name in by_name:
                added.append(by_name[dep_name])
    label = f"{full['environment']}: {full['requirement']}, the base install plus {', '.join(dict.fromkeys(added))}"
    if full["missing"]:
        label += "; not installed there: " + ", ".join(m["name"] for m in full["missing"])
    return label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-env", type=Path, default=ROOT / ".venv",
                   help="the environment holding the full install (default: the dev venv)")
    p.add_argument("--full-requirement", default="recblr[train,gpu]")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        venv = serving_venv(work)
        serving = measure("pip install recblr (serving: the wheel, no extras, in a fresh venv)", "recblr",
                          venv / "bin" / "python", "fresh venv")
        where = "dev venv" if args.full_env.resolve() == (ROOT / ".venv").resolve() else str(args.full_env)
        full = measure("", args.full_requirement, args.full_env / "bin" / "python", where)
        full["label"] = _full_label(full, args.full_env / "bin" / "python")
        not_measured = {}
        for m in full["missing"]:
            try:
                spec = m["requirement"].split(";")[0].strip()  # its marker names the extra: pip would skip it
                not_measured[m["name"]] = {"requirement": spec, **wheel_size(spec, work)}
            except (subprocess.CalledProcessError, ValueError) as e:
                print(f"WARNING: could not download {m['requirement']} to size it ({e})", file=sys.stderr)
                not_measured[m["name"]] = {"requirement": spec, "wheel": "not downloadable here"}
    payload = {
        **provenance(),
        "platform": f"{sys.platform} {os.uname().machine}",
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "what": "installed size of a requirement's dependency closure: the files each installed "
                "distribution's RECORD lists (MB = 10^6 bytes)",
        "installs": {"serving": serving, "full": full},
        "ratio_full_over_serving": round(full["mb"] / serving["mb"], 1),
        "missing_from_full_wheels": not_measured,
    }
    path = write_result("install_size", payload)
    print(f"serving {serving['distributions']} distributions {serving['mb']} MB; full {full['distributions']} "
          f"distributions {full['mb']} MB ({payload['ratio_full_over_serving']}x); missing from full: "
          f"{', '.join(full_m['name'] for full_m in full['missing']) or 'none'}; wrote {path}")


if __name__ == "__main__":
    main()
