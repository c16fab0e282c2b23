#!/bin/sh
# Writes an empty source file for every target Cargo.toml declares ([lib], [[bin]],
# [[bench]], [[test]], [[example]]), at its `path` or cargo's default path, so that
# `cargo build` can compile the dependencies before the real sources are copied in.
# Cargo refuses a manifest whose declared targets have no file; a target it only
# discovers (tests/*.rs, examples/*.rs) needs none.
#
#   sh docker/placeholders.sh [Cargo.toml]
set -eu
manifest=${1:-Cargo.toml}

awk '
  function flush() {
    if (kind == "") return
    p = path
    if (p == "") {
      if (kind == "lib") p = "src/lib.rs"
      else if (kind == "bin") p = (name == package || name == "") ? "src/main.rs" : "src/bin/" name ".rs"
      else if (kind == "bench") p = "benches/" name ".rs"
      else if (kind == "test") p = "tests/" name ".rs"
      else if (kind == "example") p = "examples/" name ".rs"
    }
    print kind, p
    kind = ""; name = ""; path = ""
  }
  /^\[/ {
    flush()
    section = $0
    if ($0 == "[lib]") kind = "lib"
    else if ($0 ~ /^\[\[(bin|bench|test|example)\]\]$/) { kind = $0; gsub(/[\[\]]/, "", kind) }
    next
  }
  /^[ \t]*(name|path)[ \t]*=/ {
    value = $0
    sub(/^[^=]*=[ \t]*"/, "", value)
    sub(/".*$/, "", value)
    if ($1 ~ /^name/) { if (section == "[package]") package = value; else name = value }
    else path = value
  }
  END {
    flush()
    # A package always has a library or a binary; without a [lib] or [[bin]]
    # section cargo looks for the defaults.
  }
' "$manifest" | while read -r kind file; do
  mkdir -p "$(dirname "$file")"
  if [ "$kind" = lib ]; then
    : >"$file"
  else
    echo 'fn main() {}' >"$file"
  fi
done
