"""The compiled C kernel of the `cpu` backend: values, gradients, threads, build cache, fallback."""

import threading
import warnings
from pathlib import Path

import pytest
import torch

from recblr.kernels import cbuild, cpu
from recblr.kernels.testing import compare, float32_tol, make_inputs, run

TOL = 2e-5
TOL_NEAR_ONE = 2e-3  # see test_cpu.py: q = sqrt(1 - a^2 + 1e-8) cancels as a -> 1


@pytest.fixture
def native(monkeypatch):
    monkeypatch.delenv(cpu.NATIVE_ENV, raising=False)
    if not cpu.native_available():
        pytest.skip(f"native kernel unavailable: {cpu.native_status()}")


@pytest.fixture
def fresh_native():
    """A test that rebuilds/reloads the library leaves the normal one loaded afterwards."""
    cpu.reset_native()
    yield
    cpu.reset_native()


@pytest.mark.parametrize("T", [1, 7, 200, 1001])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("regime", ["normal", "near_one", "near_zero"])
def test_native_matches_reference(native, T, with_h0, regime):
    # C = 37: not a multiple of any vector width, so the loop tails run too.
    inp = make_inputs(3, T, 37, with_h0=with_h0, regime=regime, seed=T)
    tol = TOL_NEAR_ONE if regime == "near_one" else float32_tol(T)
    compare(run("cpu", inp), run("reference", inp), tol)


def test_native_agrees_with_torch_path(native, monkeypatch):
    inp = make_inputs(4, 45, 24, strided=True)
    got = run("cpu", inp)
    monkeypatch.setenv(cpu.NATIVE_ENV, "0")
    compare(got, run("cpu", inp), TOL)


@pytest.mark.parametrize("B", [1, 5])
def test_native_threads_and_channel_blocks(native, B):
    """2 threads (B=1: the channels are split into blocks) give the 1-thread result."""
    inp = make_inputs(B, 33, 100, strided=True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("cpu", inp)
        torch.set_num_threads(2)
        two = run("cpu", inp)
    finally:
        torch.set_num_threads(old)
    compare(two, one, 1e-6)
    compare(two, run("reference", inp), TOL)


def test_native_strided_gates_are_not_copied(native, monkeypatch):
    """The model's chunk(2, -1) halves go to the kernel as they are (row stride 2C)."""
    inp = make_inputs(2, 9, 8, strided=True)
    copies = []
    real = torch.Tensor.contiguous

    def spy(self, *a, **k):
        if not self.is_contiguous():
            copies.append(tuple(self.shape))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    x, r, i, lam = (inp[n].detach() for n in ("x", "r_pre", "i_pre", "lam"))
    h = cpu.forward(x, r, i, lam)
    cpu.backward(torch.ones_like(h), h, x, r, i, lam)
    assert copies == []


@pytest.mark.parametrize("C", [3, 64])  # 64: the NaN sits in a vector lane, not the tail
@pytest.mark.parametrize("gate", ["r_pre", "i_pre"])
def test_native_nan_propagates(native, C, gate):
    inp = make_inputs(1, 4, C, with_h0=False)
    g = inp[gate].detach().clone()
    c = C // 2 + 1
    g[0, 1, c] = float("nan")
    args = {n: inp[n].detach() for n in ("x", "r_pre", "i_pre", "lam")}
    args[gate] = g
    h = cpu.forward(args["x"], args["r_pre"], args["i_pre"], args["lam"])
    assert torch.isnan(h[0, 1:, c]).all()
    assert not torch.isnan(h[0, 0]).any()
    assert torch.isfinite(h[:, :, [k for k in range(C) if k != c]]).all()


def test_hugepage_advice_changes_no_value(native, monkeypatch):
    """Outputs of 32 MiB and up are advised onto huge pages; values and gradients are the
    same bits with the advice off, and the advice is really given (spied)."""
    B, T, C = 2, 256, 16384  # 8 Mi floats: each output is exactly the 32 MiB threshold
    inp = make_inputs(B, T, C, with_h0=True, seed=3)
    x, r, i, lam, h0 = (inp[n].detach() for n in ("x", "r_pre", "i_pre", "lam", "h0"))
    g = torch.randn(B, T, C)
    lib = cpu._library()
    advised = []
    real = lib.bdlru_advise_hugepages

    def spy(ptr, nbytes):
        rc = real(ptr, nbytes)
        advised.append((nbytes, rc))
        return rc

    monkeypatch.setattr(lib, "bdlru_advise_hugepages", spy)
    h_on = cpu.forward(x, r, i, lam, h0)
    grads_on = cpu.backward(g, h_on, x, r, i, lam, h0)
    assert [n for n, _ in advised] == [B * T * C * 4] * 4  # h, dx, dr, di
    if THP.exists():  # a Linux kernel with THP: the advice is given, and the range carries it
        assert [rc for _, rc in advised] == [0] * 4
        assert "hg" in _vm_flags(h_on.data_ptr() + (4 << 20))
    else:  # 1 = no such advice on this platform, -1 = refused
        assert all(rc in (-1, 1) for _, rc in advised)
    monkeypatch.setenv(cpu.HUGEPAGES_ENV, "0")
    advised.clear()
    h_off = cpu.forward(x, r, i, lam, h0)
    grads_off = cpu.backward(g, h_off, x, r, i, lam, h0)
    assert advised == []
    assert torch.equal(h_on, h_off)
    for a, b in zip(grads_on, grads_off, strict=True):
        assert torch.equal(a, b)
    # A buffer without one whole aligned 2 MiB region gets no advice, and says so.
    small = torch.empty(1024)
    assert real(small.data_ptr(), 4096) == 1
    # Under the threshold no advice is asked for at all.
    monkeypatch.delenv(cpu.HUGEPAGES_ENV)
    advised.clear()
    below = make_inputs(1, 64, 1024, with_h0=False)
    cpu.forward(*(below[n].detach() for n in ("x", "r_pre", "i_pre", "lam")))
    assert advised == []


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vm_flags(addr: int) -> str:
    """The VmFlags line of this process's mapping that holds `addr` (Linux smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            if lo <= addr < hi:
                for follow in lines[i + 1 :]:
                    if follow.startswith("VmFlags:"):
                        return follow
    return ""


def test_env_var_forces_torch_path(monkeypatch):
    monkeypatch.setenv(cpu.NATIVE_ENV, "0")

    def boom(*a, **k):
        raise AssertionError("native path used despite RECBLR_CPU_NATIVE=0")

    monkeypatch.setattr(cpu, "_native_forward", boom)
    monkeypatch.setattr(cpu, "_native_backward", boom)
    inp = make_inputs(2, 11, 4)
    compare(run("cpu", inp), run("reference", inp), TOL)
    assert "RECBLR_CPU_NATIVE=0" in cpu.native_status()


def test_build_cache_reuse_and_rebuild(tmp_path, monkeypatch):
    if cbuild.shutil.which("cc") is None and not cbuild.os.environ.get("CC"):
        pytest.skip("no C compiler")
    monkeypatch.setenv(cbuild.CACHE_ENV, str(tmp_path / "cache"))
    first = cbuild.build(cpu.NATIVE_SOURCE)
    assert first.built and first.path.parent == tmp_path / "cache"
    again = cbuild.build(cpu.NATIVE_SOURCE)
    assert not again.built and again.path == first.path
    # An edited source gets its own library (the file includes itself by name: keep it).
    src = tmp_path / "src" / "bd_lru.c"
    src.parent.mkdir()
    src.write_text(cpu.NATIVE_SOURCE.read_text() + "\n/* edited */\n")
    edited = cbuild.build(src)
    assert edited.built and edited.path != first.path
    assert not list((tmp_path / "cache").glob(".*.so"))  # no temporary files left


def test_concurrent_builds(tmp_path, monkeypatch):
    """Two builders racing on an empty cache both get a complete, loadable library."""
    if cbuild.shutil.which("cc") is None and not cbuild.os.environ.get("CC"):
        pytest.skip("no C compiler")
    monkeypatch.setenv(cbuild.CACHE_ENV, str(tmp_path))
    results, errors = [], []

    def go():
        try:
            results.append(cbuild.build(cpu.NATIVE_SOURCE))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert results[0].path == results[1].path
    assert [p.name for p in tmp_path.iterdir()] == [results[0].path.name]


@pytest.mark.parametrize("cc", ["/bin/false", "/nonexistent/cc"])
def test_broken_compiler_falls_back_with_one_warning(tmp_path, monkeypatch, fresh_native, cc):
    monkeypatch.delenv(cpu.NATIVE_ENV, raising=False)
    monkeypatch.setenv("CC", cc)
    monkeypatch.setenv(cbuild.CACHE_ENV, str(tmp_path))
    inp = make_inputs(2, 13, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run("cpu", inp)
        run("cpu", inp)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "native cpu scan kernel unavailable" in msgs[0], msgs
    assert not cpu.native_available()
    assert "native kernel unavailable" in cpu.native_status()
    compare(got, run("reference", inp), TOL)
