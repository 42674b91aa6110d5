"""Backend choice: one place, one env var, one clear error."""

import pytest
import torch

import recblr.kernels as K
from recblr.kernels.testing import make_inputs


def test_default_backend_cpu(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    assert K.get_backend("cpu") == "cpu"
    assert {"reference", "cpu"} <= set(K.available_backends("cpu"))


def test_default_backend_cuda_is_triton(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    from recblr.kernels import dispatch

    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", True)
    assert K.get_backend("cuda") == "triton"
    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", False)
    assert K.get_backend("cuda") == "cpu"


@pytest.mark.parametrize("name", ["reference", "cpu", "CPU "])
def test_env_var_forces_backend(monkeypatch, name):
    monkeypatch.setenv(K.ENV_VAR, name)
    assert K.get_backend("cpu") == name.strip().lower()


def test_env_var_reaches_bd_lru(monkeypatch):
    """The forced backend is really the one that runs (reference saves more for backward)."""
    from recblr.kernels.testing import saved_bytes

    inp = make_inputs(2, 6, 3)
    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")]
    sizes = {}
    for name in ("reference", "cpu"):
        monkeypatch.setenv(K.ENV_VAR, name)
        sizes[name] = saved_bytes(lambda: K.bd_lru(*args))[0]
    assert sizes["reference"] > sizes["cpu"]


def test_unknown_backend_error_names_variable_and_choices(monkeypatch):
    monkeypatch.setenv(K.ENV_VAR, "cuda-magic")
    with pytest.raises(K.ScanBackendError) as err:
        K.bd_lru(*[torch.zeros(1, 2, 3)] * 3, torch.zeros(3))
    msg = str(err.value)
    assert K.ENV_VAR in msg and all(b in msg for b in K.BACKENDS)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(K.ENV_VAR, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in K.available_backends("cpu")
    with pytest.raises(K.ScanBackendError) as err:
        K.get_backend("cpu")
    msg = str(err.value)
    assert K.ENV_VAR in msg and "TRITON_INTERPRET" in msg and "reference" in msg


def test_triton_not_installed_is_a_clear_error(monkeypatch):
    from recblr.kernels import dispatch

    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(K.ScanBackendError, match="not installed"):
        K.bd_lru(*[torch.zeros(1, 2, 3)] * 3, torch.zeros(3), backend="triton")


def test_shape_errors():
    with pytest.raises(ValueError, match="lam"):
        K.bd_lru(*[torch.zeros(1, 2, 3)] * 3, torch.zeros(4))
    with pytest.raises(ValueError, match="h0"):
        K.bd_lru(*[torch.zeros(1, 2, 3)] * 3, torch.zeros(3), torch.zeros(2, 3))
