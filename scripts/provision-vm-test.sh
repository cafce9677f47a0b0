#!/usr/bin/env bash
# Provision what tests/store/test_luks_vm.py needs: a real LUKS2 lifecycle inside a small VM.
#
# This machine's kernel has no device-mapper, so the test boots a Debian kernel (which has
# dm-crypt and dm-integrity as modules) under qemu/TCG with virtme-ng, over the host's own root
# file system. Idempotent and quiet; safe to run before every CI run (a warm run takes ~1 s).
#
#   - Debian packages: qemu-system-x86 kmod busybox-static udev cryptsetup e2fsprogs
#   - virtme-ng from PyPI into the project venv (.venv)
#   - the Debian kernel, downloaded (not installed) and unpacked into
#     ${TDXFL_VM_KERNEL_DIR:-~/.cache/tdxfl/vm-kernel}/<version>/, modules pruned to what the
#     guest needs, depmod run; <cache>/current names the version the test uses.
#
# Must run as root (it calls apt-get). Environment:
#   TDXFL_VM_KERNEL_DIR   cache folder for the unpacked kernel (default ~/.cache/tdxfl/vm-kernel)
#   TDXFL_VM_KERNEL       kernel package version such as 6.1.0-50-amd64 (default: what
#                         Debian's linux-image-amd64 depends on)
#   PYTHON                the venv's python (default <repo>/.venv/bin/python)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cache=${TDXFL_VM_KERNEL_DIR:-$HOME/.cache/tdxfl/vm-kernel}
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
log() { printf 'provision-vm-test: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
packages=(qemu-system-x86 kmod busybox-static udev cryptsetup e2fsprogs)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
apt_updated=0
apt_update_once() {
    if [[ $apt_updated == 0 ]]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
}
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtme-ng ---------------------------------------------------------------------------
if [[ ! -x $(dirname "$python")/vng ]]; then
    log "installing virtme-ng into $(dirname "$(dirname "$python")")"
    "$python" -m pip install -q --disable-pip-version-check 'virtme-ng==1.42'
fi

# --- the Debian kernel -------------------------------------------------------------------
resolve_version() {
    apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*-amd64\)$/\1/p' | head -n1
}
version=${TDXFL_VM_KERNEL:-}
if [[ -z $version ]] && [[ -f $cache/current ]] && [[ -f $cache/$(cat "$cache/current")/.complete ]]; then
    version=$(cat "$cache/current")  # reuse what is cached: no network
fi

fetch_kernel() {  # download linux-image-$version into $work; 1 if apt cannot
    (cd "$work" && apt-get download -qq "linux-image-$version" >/dev/null 2>&1)
}
if [[ -z $version ]] || [[ ! -f $cache/$version/.complete ]]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/.work.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    [[ -n $version ]] || version=$(resolve_version)
    if [[ -z $version ]] || ! fetch_kernel; then
        # Stale or missing package lists (Debian drops superseded kernel ABIs): refresh, retry.
        apt_update_once
        [[ -n ${TDXFL_VM_KERNEL:-} ]] || version=$(resolve_version)
        [[ -n $version ]] || { log "cannot resolve the Debian kernel (apt-cache depends linux-image-amd64)"; exit 1; }
        fetch_kernel || { log "cannot download linux-image-$version"; exit 1; }
    fi
fi
dest=$cache/$version
if [[ ! -f $dest/.complete ]]; then
    log "unpacking linux-image-$version"
    dpkg-deb -x "$work"/linux-image-"$version"_*.deb "$work/root"
    moddir=$work/root/lib/modules/$version
    # Prune: keep only the modules the guest loads (virtme-ng's 9p/overlay/virtio root, the
    # virtio disk, ext4, dm-crypt/dm-integrity and the crypto they use) and their dependencies.
    depmod -b "$work/root" "$version"
    wanted=(
        9p 9pnet 9pnet_virtio overlay virtio_pci virtio_blk virtio_net virtio_console virtio_rng
        virtio_balloon fuse virtiofs
        ext4 jbd2 mbcache crc32c_generic crc32c-intel crc16
        dm-mod dm-crypt dm-integrity dm-bufio async_xor
        aesni-intel aes_generic xts cbc essiv authenc authencenc gcm ghash-clmulni-intel
        cryptd crypto_simd hmac sha256_generic sha256-ssse3 sha512_generic sha512-ssse3
        algif_skcipher algif_hash algif_aead af_alg
    )
    declare -A want=() keep=()
    for w in "${wanted[@]}"; do want[${w//-/_}]=1; done
    # modules.dep lines: "kernel/path/mod.ko[.xz]: kernel/dep1.ko ..." (dependencies are transitive)
    while IFS= read -r line; do
        mod=${line%%:*}
        base=${mod##*/}; base=${base%%.ko*}
        if [[ -n ${want[${base//-/_}]:-} ]]; then
            keep[$mod]=1
            for dep in ${line#*:}; do keep[$dep]=1; done
        fi
    done <"$moddir/modules.dep"
    while IFS= read -r -d '' ko; do
        rel=${ko#"$moddir"/}
        [[ -n ${keep[$rel]:-} ]] || rm -f "$ko"
    done < <(find "$moddir/kernel" -name '*.ko*' -print0)
    find "$moddir/kernel" -depth -type d -empty -delete
    rm -rf "$work/root/usr/share/doc" "$work/root/usr/lib/linux" "$work/root/usr/share/bug"
    depmod -b "$work/root" "$version"
    rm -rf "$dest"
    mv "$work/root" "$dest"
    touch "$dest/.complete"
    rm -rf "$work"
    trap - EXIT
fi
printf '%s\n' "$version" >"$cache/current.tmp" && mv "$cache/current.tmp" "$cache/current"
log "ready: kernel $version in $dest ($((SECONDS - start)) s)"
