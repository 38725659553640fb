#!/usr/bin/env bash
# Ferry's full check: installs the test tools if missing, then fmt, clippy, build, tests.
# Usage: sudo ./scripts/test.sh    (root: the integration tests use loop devices, mount
# and FUSE). Extra arguments go to `cargo test` after `--`, e.g. `./scripts/test.sh ext4`.
# FERRY_TEST_SERVER=qemu-nbd runs the integration tests against qemu-nbd (reference).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(fio nbdinfo nbdcopy nbdfuse nbdkit qemu-img qemu-io qemu-nbd mkfs.ext4 e2fsck losetup fusermount3 valgrind)
PACKAGES=(fio libnbd-bin nbdfuse nbdkit qemu-utils e2fsprogs fuse3 util-linux valgrind)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

step() { printf '\n==> %s\n' "$*"; }

missing=()
for t in "${TOOLS[@]}"; do have "$t" || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    # Only when something is missing: an unconditional install could replace the
    # preinstalled qemu-utils 10 with another version.
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing test tools: ${missing[*]}" >&2
        echo "       run as root (sudo ./scripts/test.sh) to install: ${PACKAGES[*]}" >&2
        exit 1
    fi
    step "installing test tools (missing: ${missing[*]})"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${PACKAGES[@]}"
    for t in "${TOOLS[@]}"; do
        have "$t" || { echo "error: $t still missing after apt-get install" >&2; exit 1; }
    done
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root; the loop-device/mount/FUSE tests will fail" >&2
fi
[ -e /dev/fuse ] || echo "warning: /dev/fuse missing; the ext4 test will fail" >&2
modprobe loop 2>/dev/null || true

# sudo resets PATH; find a rustup install of the invoking user or root.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${CARGO_HOME:-}/bin" "$HOME/.cargo/bin" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin"; do
        if [ -x "$d/cargo" ]; then export PATH="$d:$PATH"; break; fi
    done
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found (install rustup)" >&2; exit 1; }

current=setup
trap 'echo; echo "summary: FAILED during: $current" >&2' ERR
start=$(date +%s)
current="cargo fmt --check"; step "cargo fmt --check"
cargo fmt --all -- --check
current="cargo clippy"; step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
current="cargo build"; step "cargo build"
cargo build --workspace --all-targets
current="cargo test"; step "cargo test"
cargo test --workspace -- --test-threads=2 "$@"

# RUNTIME.md rule 10: the runtime's IO, cancellation and SQ-pressure tests once under
# valgrind (no use-after-free of buffers the kernel held). The multi-threaded runtime tests
# are left out: valgrind 3.19 holds its lock across io_uring_enter and they deadlock there.
current="valgrind"; step "valgrind: runtime fs/net/time tests"
# (grep -m1 may close the pipe early: cargo's SIGPIPE must not fail the script.)
lib_test=$(cargo test -p ferry-dataplane --lib --no-run --message-format=json 2>/dev/null \
    | grep -m1 -o '"executable":"[^"]*"' | cut -d'"' -f4) || true
[ -x "$lib_test" ] || { echo "error: dataplane test binary not found" >&2; exit 1; }
valgrind -q --error-exitcode=99 "$lib_test" runtime::fs runtime::net runtime::time \
    --test-threads=1 --skip move_a_connection

echo
echo "summary: fmt ok, clippy ok, build ok, tests ok, valgrind ok in $(( $(date +%s) - start ))s"
echo "tools: $(qemu-img --version | head -1); $(fio --version); $(nbdinfo --version | head -1)"
