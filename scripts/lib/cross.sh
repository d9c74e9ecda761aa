# Cross-compiling on Debian 12 without cross-rs or rustup targets: shared by scripts/cross-build
# and scripts/test-aarch64 (sourced, not run). See shared notes in README.md, "Cross builds".
#
# Why it is built this way:
# - rustup here has only the x86_64 target. Debian's own toolchain fills the gap: rustc-web and
#   cargo-web (/usr/bin/rustc, /usr/bin/cargo), its library source (rust-web-src) for
#   -Zbuild-std, and its prebuilt arm64 standard library (libstd-rust-web-dev:arm64).
# - Nothing is added to dpkg's architectures: the mirror's armhf security index has been seen
#   broken (wrong size), which makes every plain `apt-get update` on the machine exit 100 once
#   armhf is configured. The few foreign packages needed (musl, LLVM libunwind, arm64 std) are
#   fetched with a private apt state under target/cross/apt (security index limited to amd64
#   and arm64) and unpacked with dpkg-deb into target/cross/sysroot/<debian arch>/.
# - Static musl binaries link LLVM's libunwind (gcc's libgcc_eh.a does not link with
#   -Zbuild-std), plus a shim for __fprintf_chk, which Debian's libunwind.a calls (it was built
#   against glibc with _FORTIFY_SOURCE) and musl does not have.
# - -C relocation-model=static: without it the "static" binary still asks for /lib/ld-musl-*.

# The repository's root and where every cross artefact lives (inside target/, so `cargo clean`
# removes it and git ignores it). Builds get their own target dir: they never invalidate the
# host's target/debug or target/release.
CROSS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CROSS_DIR="$CROSS_REPO/target/cross"
CROSS_TARGET_DIR="$CROSS_DIR/cargo"

# Debian's toolchain, not rustup's proxies (which come first in PATH).
CROSS_CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# RUSTFLAGS would replace the per-target flags set below, and rustup's toolchain choice has no
# meaning for Debian's cargo.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS RUSTUP_TOOLCHAIN CARGO_BUILD_TARGET

cross_fail() {
  echo "error: $*" >&2
  exit 1
}

cross_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The parts of a supported Rust target triple, as shell variables:
# debian arch, GNU cross triplet (compiler prefix), musl folder name, qemu user emulator.
cross_describe() {
  case "$1" in
    aarch64-unknown-linux-musl | aarch64-unknown-linux-gnu)
      T_DEBARCH=arm64 T_GNU=aarch64-linux-gnu T_MUSL=aarch64-linux-musl T_QEMU=qemu-aarch64-static ;;
    armv7-unknown-linux-musleabihf)
      T_DEBARCH=armhf T_GNU=arm-linux-gnueabihf T_MUSL=arm-linux-musleabihf T_QEMU=qemu-arm-static ;;
    x86_64-unknown-linux-musl)
      T_DEBARCH=amd64 T_GNU=x86_64-linux-gnu T_MUSL=x86_64-linux-musl T_QEMU="" ;;
    *) cross_fail "unsupported target '$1' (supported: aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf, x86_64-unknown-linux-musl, aarch64-unknown-linux-gnu)" ;;
  esac
  T_ENV="$(echo "$1" | tr 'a-z-' 'A-Z_')"   # CARGO_TARGET_<T_ENV>_LINKER
  T_CC="$(echo "$1" | tr '-' '_')"          # CC_<T_CC>
}

# Installs the Debian packages (native architecture only) that are missing; waits for another
# apt or dpkg to finish instead of failing on the lock.
cross_apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  local attempt
  for attempt in 1 2 3; do
    if cross_sudo apt-get -o DPkg::Lock::Timeout=600 update -qq \
      && cross_sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -qq --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    echo "apt-get failed (attempt $attempt of 3); finishing any half-configured packages, then retrying" >&2
    cross_sudo env DEBIAN_FRONTEND=noninteractive dpkg --configure -a || true
    sleep 10
  done
  cross_fail "could not install Debian packages: ${missing[*]}"
}

# The host tools every cross build needs.
cross_host_tools() {
  local packages=(rustc-web cargo-web rust-web-src file binutils)
  local t
  for t in "$@"; do
    cross_describe "$t"
    case "$T_DEBARCH" in
      arm64) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static) ;;
      armhf) packages+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static) ;;
      amd64) packages+=(gcc libc6-dev) ;;
    esac
    case "$t" in *musl*) packages+=(musl-tools) ;; esac
  done
  cross_apt_install $(printf '%s\n' "${packages[@]}" | sort -u)
  [ -x "$CROSS_CARGO" ] || cross_fail "$CROSS_CARGO is missing after installing cargo-web"
  [ -d /usr/lib/rustlib/src/rust/library ] || cross_fail "rust-web-src is not installed (/usr/lib/rustlib/src/rust/library is missing)"
}

# apt with a private state (lists, cache, sources) for the foreign packages: it never touches
# the machine's own apt lists or dpkg database.
cross_private_apt() {
  local dir="$CROSS_DIR/apt"
  # Written every time: cheap, and right again if the checkout moved. MESHANICS_DEBIAN_MIRROR
  # replaces deb.debian.org (it must serve debian/ and debian-security/).
  local CROSS_MIRROR="${MESHANICS_DEBIAN_MIRROR:-http://deb.debian.org}"
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d"
  [ -f "$dir/status" ] || : >"$dir/status"
  # The armhf security index is left out on purpose (see the top of this file); nothing
  # this project takes from armhf is a security update.
  cat >"$dir/sources.list" <<EOF
deb [arch=amd64,arm64,armhf] $CROSS_MIRROR/debian bookworm main
deb [arch=amd64,arm64] $CROSS_MIRROR/debian-security bookworm-security main
EOF
  cat >"$dir/apt.conf" <<EOF
Dir::State::Lists "$dir/lists";
Dir::State::Status "$dir/status";
Dir::Cache "$dir/cache";
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "$dir/sources.list.d";
APT::Architectures { "amd64"; "arm64"; "armhf"; };
// The machine's hooks (e.g. a docker image's "rm /var/cache/apt/archives/*.deb") must not
// run for this private state: they would delete what a concurrent apt-get install downloads.
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Post-Invoke;
EOF
  [ "$(id -u)" -ne 0 ] || echo 'APT::Sandbox::User "root";' >>"$dir/apt.conf"
  APT_CONFIG="$dir/apt.conf" apt-get -q "$@"
}

# Unpacks Debian package `name:arch` (at `version`, or the newest) into sysroot folder `root`,
# once: a stamp records what was unpacked.
cross_unpack() {
  local spec="$1" version="$2" root="$3"
  local stamp="$root/.unpacked-${spec//:/_}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
    return 0
  fi
  if [ ! -f "$CROSS_DIR/apt/.updated" ]; then
    echo "==> fetching Debian package indexes (private apt state in $CROSS_DIR/apt)"
    cross_private_apt update >/dev/null || cross_fail "apt-get update of the private state in $CROSS_DIR/apt failed"
    touch "$CROSS_DIR/apt/.updated"
  fi
  local want="$spec"
  [ -z "$version" ] || want="$spec=$version"
  local debs="$CROSS_DIR/apt/debs"
  rm -rf "$debs" && mkdir -p "$debs" "$root"
  echo "==> unpacking $want into $root"
  (cd "$debs" && cross_private_apt download "$want" >/dev/null) \
    || cross_fail "could not download Debian package $want"
  dpkg-deb -x "$debs"/*.deb "$root" || cross_fail "could not unpack $(ls "$debs")"
  rm -rf "$debs"
  echo "$version" >"$stamp"
}

# The target's C toolchain and, for musl, the unwinder folder; then the cargo environment for
# it (linker, C compiler, rustflags, runner) exported for /usr/bin/cargo.
cross_prepare() {
  local triple="$1"
  cross_describe "$triple"
  local root="$CROSS_DIR/sysroot/$T_DEBARCH"
  local linker="$T_GNU-gcc" ar="$T_GNU-ar" rustflags=""
  case "$triple" in
    *-musl*)
      cross_unpack "libunwind-14-dev:$T_DEBARCH" "" "$root"
      if [ "$T_DEBARCH" = amd64 ]; then
        linker=x86_64-linux-musl-gcc   # from musl-tools (musl-dev:amd64), native
        ar=ar
      else
        cross_unpack "musl-dev:$T_DEBARCH" "" "$root"
        # Debian's musl-gcc wrapper and specs name /usr/lib/<musl>: point them at the sysroot.
        linker="$root/bin/$T_MUSL-gcc"
        mkdir -p "$root/bin"
        sed -e "s|/usr/lib/$T_MUSL|$root/usr/lib/$T_MUSL|g" \
          -e "s|/usr/include/$T_MUSL|$root/usr/include/$T_MUSL|g" \
          "$root/usr/lib/$T_MUSL/musl-gcc.specs" >"$root/musl-gcc.specs"
        printf '#!/bin/sh\nexec %s "$@" -specs "%s"\n' "$T_GNU-gcc" "$root/musl-gcc.specs" >"$linker"
        chmod +x "$linker"
      fi
      local unwind="$root/unwind"
      if [ ! -f "$unwind/libunwind.a" ]; then
        mkdir -p "$unwind"
        printf '%s\n' '#include <stdarg.h>' '#include <stdio.h>' \
          'int __fprintf_chk(FILE *f, int flag, const char *format, ...) {' \
          '  va_list args; va_start(args, format); (void)flag;' \
          '  int n = vfprintf(f, format, args); va_end(args); return n; }' >"$unwind/fprintf_chk.c"
        "$linker" -O2 -c "$unwind/fprintf_chk.c" -o "$unwind/fprintf_chk.o" \
          || cross_fail "could not compile the __fprintf_chk shim with $linker"
        cp "$root/usr/lib/llvm-14/lib/libunwind.a" "$unwind/libunwind.a.tmp"
        "$ar" rs "$unwind/libunwind.a.tmp" "$unwind/fprintf_chk.o" 2>/dev/null \
          || cross_fail "could not add the __fprintf_chk shim to $unwind/libunwind.a"
        mv "$unwind/libunwind.a.tmp" "$unwind/libunwind.a"
      fi
      rustflags="-C link-self-contained=no -C relocation-model=static -L $unwind"
      [ -z "$T_QEMU" ] || export "CARGO_TARGET_${T_ENV}_RUNNER=$T_QEMU"
      ;;
    *-gnu)
      # Debian's prebuilt std for the target, matching rustc-web's version exactly.
      local version
      version="$(dpkg-query -W -f='${Version}' rustc-web)"
      cross_unpack "libstd-rust-web-dev:$T_DEBARCH" "$version" "$root/std"
      rustflags="--sysroot $root/std/usr"
      export RUSTDOCFLAGS="--sysroot $root/std/usr"
      # The loader and libc.so.6 come from two different packages: without LD_LIBRARY_PATH
      # qemu hangs at the first thread start.
      export "CARGO_TARGET_${T_ENV}_RUNNER=$T_QEMU -L /usr/$T_GNU -E LD_LIBRARY_PATH=/usr/$T_GNU/lib"
      ;;
  esac
  command -v "$linker" >/dev/null || cross_fail "linker $linker for $triple is missing"
  export "CARGO_TARGET_${T_ENV}_LINKER=$linker" "CARGO_TARGET_${T_ENV}_RUSTFLAGS=$rustflags"
  export "CC_${T_CC}=$linker" "AR_${T_CC}=$ar"
}

# The runner command for `triple` (empty for the host's architecture).
cross_runner() {
  local var="CARGO_TARGET_$(echo "$1" | tr 'a-z-' 'A-Z_')_RUNNER"
  echo "${!var:-}"
}
