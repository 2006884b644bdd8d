#!/usr/bin/env bash
# Run HERE (Debian development machine): gathers what the GPU machine lacks to build frugal into
# the git-ignored folder .carry/gpu-deps, to be carried to it with the run (carry: .carry/gpu-deps).
#
# The GPU machine (Ubuntu 24.04) has the PCRE2 and xxhash shared libraries (libpcre2-8.so.0,
# libxxhash.so.0) but not their headers, .so development links or pkg-config files, and no toml++.
#   .carry/gpu-deps/include/   toml++/, pcre2.h, xxhash.h, xxh3.h   (copied from Debian's -dev packages)
#   .carry/gpu-deps/lib/       libpcre2-8.so, libxxhash.so -> /usr/lib/x86_64-linux-gnu/lib*.so.0
#                              (links into the GPU machine's system libraries; gpu_round.sh remakes
#                              them there in case the carry drops links)
#   .carry/gpu-deps/pkgconfig/ libpcre2-8.pc, libxxhash.pc pointing at the two folders above
#                              (paths relative to the .pc file, so the folder can move)
# The headers are the Debian 12 versions (PCRE2 10.42, xxhash 0.8.1); both libraries keep their ABI
# (soname .so.0) across the versions Ubuntu 24.04 ships.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=.carry/gpu-deps
multiarch=x86_64-linux-gnu
rm -rf "$dest"
mkdir -p "$dest/include" "$dest/lib" "$dest/pkgconfig"

need() {
  [ -e "$1" ] || { echo "carry_gpu_deps: $1 is missing here (install $2)" >&2; exit 1; }
}
need /usr/include/toml++/toml.h libtomlplusplus-dev
need /usr/include/pcre2.h libpcre2-dev
need /usr/include/xxhash.h libxxhash-dev

cp -r /usr/include/toml++ "$dest/include/"
cp /usr/include/pcre2.h /usr/include/xxhash.h "$dest/include/"
[ -e /usr/include/xxh3.h ] && cp /usr/include/xxh3.h "$dest/include/"

# Development links, pointing where the libraries live on the GPU machine.
ln -sfn /usr/lib/$multiarch/libpcre2-8.so.0 "$dest/lib/libpcre2-8.so"
ln -sfn /usr/lib/$multiarch/libxxhash.so.0 "$dest/lib/libxxhash.so"

# pkg-config files: this machine's, with the prefix lines rewritten to the carried folders.
write_pc() {
  local source=$1 target=$2
  need "$source" "the -dev package that provides $(basename "$source")"
  {
    echo 'includedir=${pcfiledir}/../include'
    echo 'libdir=${pcfiledir}/../lib'
    grep -vE '^(prefix|exec_prefix|libdir|includedir)=' "$source"
  } > "$target"
}
write_pc /usr/lib/$multiarch/pkgconfig/libpcre2-8.pc "$dest/pkgconfig/libpcre2-8.pc"
write_pc /usr/lib/$multiarch/pkgconfig/libxxhash.pc "$dest/pkgconfig/libxxhash.pc"

echo "carry_gpu_deps: wrote $dest ($(du -sh "$dest" | cut -f1)):"
find "$dest" -maxdepth 2 \( -type f -o -type l \) -printf '  %p\n' | grep -v '/toml++/' | sort
echo "  $dest/include/toml++/ ($(find "$dest/include/toml++" -type f | wc -l) files)"
