"""`make notebook`'s script: JupyterLab on 127.0.0.1 opens the chapter, and its kernel is the project's Python.

The test starts ``scripts/notebook.sh`` as ``make notebook`` does (installing JupyterLab into the
environment on first use), waits for the server's ``/api/status``, opens a session on the Chinese
notebook and runs a cell through the kernel's websocket, then stops the server and its kernel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "notebook.sh"
TOKEN = "resnetlab-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(f"{base}{path}", data=body, method="POST" if body else "GET",
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def run_cell(base: str, kernel_id: str, code: str, timeout: float = 120.0) -> str:
    """Execute ``code`` in the kernel over its websocket (Jupyter's messaging protocol); its printed output."""
    import websocket  # a dependency of jupyter_server

    ws = websocket.create_connection(f"ws{base[4:]}/api/kernels/{kernel_id}/channels?token={TOKEN}", timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        printed, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                printed.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(printed)
        raise AssertionError(f"the cell did not finish within {timeout} s")
    finally:
        ws.close()


def test_a_language_the_chapter_lacks_is_refused_in_one_line():
    out = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "CHAPTER_LANG": "fr", "VENV": sys.prefix})
    assert out.returncode == 2
    assert out.stderr.strip() == ("resnetlab: CHAPTER_LANG=fr is not a language of the chapter; "
                                  "use CHAPTER_LANG=en or CHAPTER_LANG=zh-CN")


def test_the_makefile_target_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "notebook: setup data\n\t@CHAPTER_LANG=$(CHAPTER_LANG) bash scripts/notebook.sh $(NOTEBOOK_ARGS)" in makefile


@pytest.mark.slow
def test_jupyterlab_opens_the_chinese_chapter_with_the_projects_kernel(tmp_path):
    port = free_port()
    env = {**os.environ, "CHAPTER_LANG": "zh-CN", "VENV": sys.prefix,
           # The server's own files (runtime, config) in the test's folder, not the user's.
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(
        ["bash", str(SCRIPT), "--no-browser", f"--port={port}", f"--IdentityProvider.token={TOKEN}",
         "--ServerApp.port_retries=0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # First use installs JupyterLab (seconds from a local index), then the server starts: wait for it,
        # with a deadline far beyond both, failing (not skipping) past it.
        deadline = time.monotonic() + 600
        while True:
            try:
                status = api(base, "/api/status")
                break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "JupyterLab did not answer within 600 s"
            time.sleep(0.5)
        assert "started" in status
        notebook = api(base, "/api/contents/docs/chapter.zh-CN.ipynb")
        assert notebook["type"] == "notebook" and notebook["content"]["metadata"]["kernelspec"]["name"] == "python3"
        session = api(base, "/api/sessions", {"path": "docs/chapter.zh-CN.ipynb", "type": "notebook",
                                               "kernel": {"name": "python3"}})
        kernel = session["kernel"]["id"]
        first_code = next(c for c in notebook["content"]["cells"] if c["cell_type"] == "code")["source"]
        run_cell(base, kernel, first_code)  # the chapter's first cell runs in this kernel
        printed = run_cell(base, kernel, "import sys, resnetlab; print(sys.prefix); print(resnetlab.__file__)")
        prefix, package = printed.split()
        assert Path(prefix).resolve() == Path(sys.prefix).resolve()  # the project's environment
        assert Path(package).resolve().is_relative_to(ROOT / "src")  # make setup installs it editable
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server stops its kernels on SIGTERM
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        server.stdout.close()
