"""Build a small C source into a shared library on first use, cache it, load it with ctypes.

No toolchain is downloaded: the system compiler (`$CC`, else `cc`) is used. The library lands
in a cache directory (`$RECBLR_CACHE_DIR`, else `~/.cache/recblr/kernels`; a temporary
directory when neither is writable) under a name keyed by a hash of the source text, the
compiler's identity (`cc --version`), the flags and the machine type, so an edited source, a
new compiler or other flags build anew and an unchanged one is reused. The build writes to a
temporary file in the cache directory and renames it into place (atomic on POSIX), so two
processes building at once both end up loading a complete library.

Flags: `-O3 -fno-math-errno -fno-trapping-math` let gcc vectorise the loops (sqrt without an
errno branch, selects without trap semantics); neither changes a result, and `-std=c99` keeps
floating-point contraction off, so every ISA rounds alike. `-march=native` is used because
the scan is compute-bound at SSE2 width (3 exp, 2 divides and a sqrt per element): on the
AVX-512 machine of benchmarks/results/scan.json it is ~2.5x faster than the x86-64 baseline.
A native build must never run on another CPU (SIGILL, no fallback), so the cache key then
includes the host's CPU identity (model name and feature flags from /proc/cpuinfo, or the
platform's processor string elsewhere): a cache directory shared between machines (NFS home,
a container image) holds one build per CPU type. Each build tries, in order: native +
OpenMP, OpenMP, native, neither (without OpenMP the kernels run on one thread).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BASE_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")
OPENMP_FLAGS = ("-fopenmp",)
NATIVE_FLAGS = ("-march=native",)
# Tried in order; the first that compiles and loads wins.
VARIANTS = (
    (*NATIVE_FLAGS, *OPENMP_FLAGS),
    OPENMP_FLAGS,
    NATIVE_FLAGS,
    (),
)
CACHE_ENV = "RECBLR_CACHE_DIR"


class BuildError(RuntimeError):
    """The library could not be built or loaded (no compiler, compile error, bad cache dir)."""


@dataclass
class Built:
    lib: ctypes.CDLL
    path: Path
    built: bool  # False: loaded from the cache
    openmp: bool
    flags: tuple[str, ...]


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recblr" / "kernels"


def compiler() -> str:
    """Path of the C compiler (`$CC` if set, else `cc`); BuildError when none is found."""
    cc = os.environ.get("CC", "").strip() or "cc"
    exe = cc.split()[0]
    found = shutil.which(exe)
    if found is None:
        raise BuildError(f"no C compiler: {exe!r} not found on PATH (set CC to one)")
    return found


def _compiler_id(cc: str) -> str:
    try:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"C compiler {cc!r} does not run: {e}") from e
    if res.returncode != 0:
        raise BuildError(f"C compiler {cc!r} failed on --version (exit {res.returncode})")
    return res.stdout.strip()


def host_cpu_id() -> str:
    """What -march=native depends on: CPU model and feature flags (best effort)."""
    parts = [platform.machine(), platform.processor()]
    try:
        seen = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("model name", "flags", "features", "cpu part", "cpu implementer") and (
                key not in seen
            ):
                seen.add(key)
                parts.append(line)
    except OSError:
        pass
    return "\n".join(parts)


def _writable_dir(d: Path) -> Path:
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".probe-", delete=True)
        probe.close()
        return d
    except OSError:
        alt = (
            Path(tempfile.gettempdir())
            / f"recblr-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        )
        alt.mkdir(parents=True, exist_ok=True)
        return alt


def _compile(cc: str, src: Path, flags: tuple[str, ...], out: Path) -> None:
    tmp = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.stem}-", suffix=".so",
                                      delete=False)  # fmt: skip
    tmp.close()
    tmp_path = Path(tmp.name)
    try:
        cmd = [cc, *flags, "-o", str(tmp_path), str(src), "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BuildError(f"{' '.join(cmd)}: {e}") from e
        if res.returncode != 0:
            msg = (res.stderr or res.stdout).strip().splitlines()
            detail = msg[0] if msg else "no output"
            raise BuildError(f"{Path(cc).name} exited {res.returncode}: {detail}")
        os.chmod(tmp_path, 0o755)
        os.replace(tmp_path, out)  # atomic: a concurrent builder's identical file may be replaced
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def build(src: Path, name: str | None = None) -> Built:
    """Compile `src` (or reuse the cached build) and load it; BuildError on any failure."""
    src = Path(src)
    try:
        text = src.read_bytes()
    except OSError as e:
        raise BuildError(f"kernel source missing: {e}") from e
    cc = compiler()
    cc_id = _compiler_id(cc)
    d = _writable_dir(cache_dir())
    errors = []
    for extra in VARIANTS:
        flags = (*BASE_FLAGS, *extra)
        h = hashlib.sha256()
        native = any(f in NATIVE_FLAGS for f in extra)
        for part in (text, cc.encode(), cc_id.encode(), " ".join(flags).encode(),
                     platform.machine().encode(), platform.system().encode(),
                     (host_cpu_id() if native else "").encode()):  # fmt: skip
            h.update(part)
            h.update(b"\0")
        out = d / f"{name or src.stem}-{h.hexdigest()[:20]}.so"
        built = False
        if not out.exists():
            try:
                _compile(cc, src, flags, out)
            except BuildError as e:
                errors.append(str(e))
                continue
            built = True
        try:
            lib = ctypes.CDLL(str(out))
        except OSError as e:
            errors.append(f"cannot load {out}: {e}")
            continue
        return Built(lib=lib, path=out, built=built, openmp=any(f in OPENMP_FLAGS for f in extra),
                     flags=flags)  # fmt: skip
    raise BuildError("; ".join(dict.fromkeys(errors)))
