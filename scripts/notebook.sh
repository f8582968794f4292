#!/usr/bin/env bash
# Open the chapter notebook in JupyterLab, run by the project's .venv (`make notebook`).
#   CHAPTER_LANG=en (default): docs/chapter.ipynb     CHAPTER_LANG=zh-CN: docs/chapter.zh-CN.ipynb
# Any arguments go to `jupyter lab` (e.g. --no-browser --port 8899). The first use installs
# JupyterLab into .venv (the package's `notebook` extra); later uses start at once.
set -u
venv=${VENV:-.venv}
lang=${CHAPTER_LANG:-en}
case "$lang" in
    en) notebook=docs/chapter.ipynb ;;
    zh-CN) notebook=docs/chapter.zh-CN.ipynb ;;
    *) echo "resnetlab: CHAPTER_LANG=$lang is not a language of the chapter; use CHAPTER_LANG=en or CHAPTER_LANG=zh-CN" >&2; exit 2 ;;
esac
py=$venv/bin/python
[ -x "$py" ] || { echo "resnetlab: $venv has no Python; run make setup first (make notebook does it for you)" >&2; exit 2; }

if ! "$py" -c "import jupyterlab, ipykernel" 2>/dev/null; then
    echo "resnetlab: installing JupyterLab into $venv (first use only)"
    "$py" -m pip install --quiet --disable-pip-version-check "jupyterlab>=4,<5" "ipykernel>=6" \
        || { echo "resnetlab: could not install JupyterLab into $venv; see pip's message above, or run: $py -m pip install jupyterlab" >&2; exit 2; }
fi

# The kernel is .venv's own Python: its spec is written inside .venv under the notebook's kernel
# name (python3), and JUPYTER_PATH puts .venv's specs before the user's own (~/.local/share/jupyter),
# which could name another Python that lacks resnetlab.
"$py" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (resnetlab .venv)" >/dev/null \
    || { echo "resnetlab: could not register $venv's kernel with Jupyter" >&2; exit 2; }
export JUPYTER_PATH="$venv/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
# Jupyter refuses to run as root unless told; containers often run as root, and the server listens on 127.0.0.1 only.
as_root=()
[ "$(id -u)" = 0 ] && as_root=(--allow-root)
echo "resnetlab: opening $notebook in JupyterLab (Ctrl-C twice to stop)"
# 127.0.0.1 only: a notebook server runs code, so it is not offered to the network. The file browser starts
# at the checkout, with the chapter open.
exec "$venv/bin/jupyter" lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$PWD" "${as_root[@]}" "$notebook" "$@"
