#!/usr/bin/env bash
# Prints a PATH that holds only what a machine with nothing but make, docker and
# Compose has: make, docker, docker-compose (when installed), bash and sh, and
# coreutils. No cargo, redis-server, python3 or node: the Docker path of
# `make test` and `make run` must not need them.
#
#   PATH=$(scripts/evaluator-path.sh DIR) make test
#
# DIR (created) receives symbolic links to those commands.
set -euo pipefail
dir=${1:?usage: scripts/evaluator-path.sh DIR}
bin="$dir/bin"
rm -rf "$bin"
mkdir -p "$bin"

link() {
  local path
  path=$(command -v "$1" 2>/dev/null) || return 0
  ln -sf "$path" "$bin/$1"
}

for tool in make docker docker-compose bash sh; do
  link "$tool"
done
# coreutils: every command the package installs.
while read -r file; do
  case $file in
    /bin/* | /usr/bin/*) [[ -x $file && ! -d $file ]] && ln -sf "$file" "$bin/$(basename "$file")" ;;
  esac
done < <(dpkg -L coreutils)

for absent in cargo rustc redis-server redis-cli python3 node npm; do
  if [[ -e $bin/$absent ]]; then
    echo "evaluator-path: $absent must not be on the evaluator's PATH" >&2
    exit 1
  fi
done
echo "$bin"
