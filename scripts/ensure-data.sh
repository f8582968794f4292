#!/usr/bin/env bash
# Make sure Fashion-MNIST is on disk: Debian's package dataset-fashion-mnist puts its four IDX
# .gz files in /usr/share/datasets/fashion-mnist. With --optional, a failure is only a warning
# (the test suite generates its own tiny data and skips what needs the real files).
set -u
optional=0
[ "${1:-}" = "--optional" ] && optional=1
dir=${RESNETLAB_DATA:-/usr/share/datasets/fashion-mnist}

have_data() {
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [ -f "$dir/$f.gz" ] || [ -f "$dir/$f" ] || return 1
    done
}

fail() {
    echo "resnetlab: $1" >&2
    [ "$optional" = 1 ] && { echo "resnetlab: continuing without Fashion-MNIST; tests that need it are skipped" >&2; exit 0; }
    exit 2
}

have_data && exit 0
if [ -n "${RESNETLAB_DATA:-}" ]; then
    fail "RESNETLAB_DATA=$dir does not hold the four Fashion-MNIST IDX files; point it at the folder that does"
fi
command -v apt-get >/dev/null 2>&1 || fail "Fashion-MNIST is missing and apt-get is not available; install Debian's dataset-fashion-mnist, or set RESNETLAB_DATA to a folder holding the four IDX .gz files"
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "Fashion-MNIST is missing; run as root: apt-get update && apt-get install -y dataset-fashion-mnist"
    sudo="sudo"
fi
echo "resnetlab: installing Debian's dataset-fashion-mnist into $dir" >&2
$sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || fail "apt-get install dataset-fashion-mnist failed; install it by hand, or set RESNETLAB_DATA to a folder holding the four IDX .gz files"
have_data || fail "dataset-fashion-mnist is installed but $dir lacks the IDX files; set RESNETLAB_DATA to a folder that holds them"
