"""A command whose optional extra is not installed says in one line which extra to install (issue 20)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from dkdm.cli import app
from dkdm.cache.store import Store
from dkdm.errors import DkdmError
from dkdm.evaluate.features import InceptionFeatures
from dkdm.extras import require


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("module", ["uvicorn", "starlette", "prometheus_client"])
def test_serve_without_the_serve_extra_is_one_line(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    res = run("serve", "builtin:digits")
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert lines == [f"error: dkdm serve needs the [serve] extra ({module} is not installed): pip install 'dkdm[serve]'"]


def test_bench_serve_without_httpx(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "httpx", None)
    res = run("bench", "serve", "--student", tmp_path)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == "error: dkdm bench serve needs the [serve] extra (httpx is not installed): pip install 'dkdm[serve]'"


def test_s3_cache_without_s3fs(monkeypatch):
    import fsspec  # noqa: F401  (loads fsspec.registry)

    registry = sys.modules["fsspec.registry"]._registry  # fsspec.registry itself is a read-only view of it
    monkeypatch.setitem(sys.modules, "s3fs", None)
    # an earlier test (moto S3) leaves fsspec's class for s3 imported: forget it so the import really happens
    for protocol in ("s3", "s3a"):
        monkeypatch.delitem(registry, protocol, raising=False)
    with pytest.raises(DkdmError, match=r"needs the \[s3\] extra \(s3fs is not installed\): pip install 'dkdm\[s3\]'"):
        Store("s3://bucket/cache")


def test_inception_without_clean_fid_names_the_no_deps_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cleanfid.inception_torchscript", None)
    with pytest.raises(DkdmError, match=r"--features inception needs the \[fid\] extra .*pip install --no-deps clean-fid"):
        InceptionFeatures(str(tmp_path / "inception-2015-12-05.pt"))


def test_a_missing_core_module_keeps_its_traceback(monkeypatch):
    """Only optional modules map to an extra; anything else is a broken install and stays loud."""
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError):
        require("zarr")
