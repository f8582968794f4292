"""`resnetlab download` against a local HTTP server: good files land, corrupt ones leave nothing."""

import gzip
import http.server
import shutil
import threading
from functools import partial

import pytest

from helpers import one_line_error
from resnetlab.cli import main
from resnetlab.data import DataError, download_fashion_mnist
from resnetlab.data import download as dl


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Serve a folder on 127.0.0.1; yields a function folder -> base URL."""
    servers = []

    def start(folder):
        handler = partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def tiny_sums(folder):
    return {name: dl.content_sha256(folder / name) for name in dl.CONTENT_SHA256}


def test_download_debian_files(real_data, serve, tmp_path, capsys):
    url = serve(real_data)
    assert main(["download", "fashion-mnist", str(tmp_path / "fm"), "--url", url]) == 0
    for name in dl.CONTENT_SHA256:
        assert (tmp_path / "fm" / name).read_bytes() == (real_data / name).read_bytes()
    assert "resnetlab train --data" in capsys.readouterr().out
    # A second run finds the files present and downloads nothing.
    assert main(["download", "fashion-mnist", str(tmp_path / "fm"), "--url", url + "missing/"]) == 0


def test_download_upstream_packaging_is_accepted(tiny_data, serve, tmp_path, monkeypatch):
    # Upstream's gzip headers carry the file name, Debian's do not; the content check accepts both.
    served = tmp_path / "served"
    served.mkdir()
    for name in dl.CONTENT_SHA256:
        content = gzip.decompress((tiny_data / name).read_bytes())
        with gzip.GzipFile(filename=name[:-3], mode="wb", fileobj=open(served / name, "wb")) as f:
            f.write(content)
    monkeypatch.setattr(dl, "CONTENT_SHA256", tiny_sums(tiny_data))
    download_fashion_mnist(tmp_path / "out", base_url=serve(served), log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(dl.CONTENT_SHA256)
    assert all(p.stat().st_mode & 0o044 for p in (tmp_path / "out").iterdir())  # not left owner-only


def test_damaged_file_already_present_is_replaced(tiny_data, serve, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "t10k-labels-idx1-ubyte.gz").write_text("<html>an interrupted download by another tool</html>")
    monkeypatch.setattr(dl, "CONTENT_SHA256", tiny_sums(tiny_data))
    download_fashion_mnist(out, base_url=serve(tiny_data), log=lambda s: None)
    for name in dl.CONTENT_SHA256:
        assert (out / name).read_bytes() == (tiny_data / name).read_bytes()


def test_corrupt_file_is_rejected_and_nothing_left(tiny_data, serve, tmp_path, monkeypatch, capsys):
    served = shutil.copytree(tiny_data, tmp_path / "served")
    bad = served / "train-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(bad.read_bytes()))
    content[500] ^= 0xFF  # one flipped byte inside a valid gzip stream
    bad.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setattr(dl, "CONTENT_SHA256", tiny_sums(tiny_data))
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    out = tmp_path / "out"
    assert main(["download", "fashion-mnist", str(out), "--url", serve(served), "--retries", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte.gz" in err[0] and "SHA-256" in err[0] and "2 tries" in err[0]
    assert not (out / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_unreachable_server(tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="download failed.*after 2 tries"):
        download_fashion_mnist(tmp_path / "out", base_url="http://127.0.0.1:9/", retries=2, timeout=2, log=lambda s: None)
    assert list((tmp_path / "out").iterdir()) == []


def test_not_gzip_is_rejected(tmp_path, serve, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for name in dl.CONTENT_SHA256:
        (served / name).write_text("<html>not found</html>")
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match="not a valid gzip file"):
        download_fashion_mnist(tmp_path / "out", base_url=serve(served), retries=1, log=lambda s: None)


def test_retries_must_be_at_least_one(tmp_path, capsys):
    one_line_error(capsys, ["download", "fashion-mnist", str(tmp_path / "d"), "--retries", "0"],
                   "--retries 0 must be at least 1")
    assert not (tmp_path / "d").exists()
