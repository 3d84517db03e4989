#!/usr/bin/env bash
# Generates the committed Python gRPC stubs from protos/, or checks they are fresh.
#
#   scripts/proto.sh generate   write paymesh/<domain>/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py, *_pb2_grpc.pyi
#   scripts/proto.sh check      fail if the committed stubs differ from a fresh generation,
#                               and run `buf lint`
#
# The generator is the pinned grpcio-tools (python -m grpc_tools.protoc): it needs no
# network, and the same version always writes the same bytes. PYTHON names the
# interpreter that has it (default .venv/bin/python, relative to the repo root); buf
# is looked up next to that interpreter, then on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PROTO_ROOT=protos
# Stubs are recognised by name only, so a stub whose .proto was removed is caught too.
STUB_GLOBS=('*_pb2.py' '*_pb2.pyi' '*_pb2_grpc.py' '*_pb2_grpc.pyi')

TMP=""
trap '[[ -z "$TMP" ]] || rm -rf "$TMP"' EXIT

die() { echo "proto.sh: $*" >&2; exit 1; }

usage() { echo "usage: scripts/proto.sh generate|check" >&2; exit 2; }

find_buf() {
  local python_path
  python_path="$(command -v "$PYTHON" || true)"
  if [[ -n "$python_path" && -x "$(dirname "$python_path")/buf" ]]; then
    echo "$(dirname "$python_path")/buf"
  elif command -v buf >/dev/null; then
    command -v buf
  else
    die "buf not found next to $PYTHON nor on PATH (pip install buf-bin)"
  fi
}

# Lists the stub files under a tree, relative to it, in a locale-independent order.
list_stubs() {
  local root="$1" args=() glob
  for glob in "${STUB_GLOBS[@]}"; do args+=(-o -name "$glob"); done
  [[ -d "$root/paymesh" ]] || return 0
  (cd "$root" && find paymesh -path 'paymesh/*/v1/*' -type f \( "${args[@]:1}" \) | LC_ALL=C sort)
}

# Generates every stub into the directory $1, mirroring the proto packages.
generate_into() {
  local out="$1" protos
  "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null \
    || die "$PYTHON cannot import grpc_tools (pip install -e '.[test]')"
  mapfile -t protos < <(find "$PROTO_ROOT" -name '*.proto' | LC_ALL=C sort)
  [[ ${#protos[@]} -gt 0 ]] || die "no .proto files under $PROTO_ROOT/"
  # The typed stubs and servicers (*_pb2_grpc.pyi, for mypy --strict) come from the pinned mypy-protobuf.
  local mypy_grpc
  mypy_grpc="$(dirname "$(command -v "$PYTHON")")/protoc-gen-mypy_grpc"
  [[ -x "$mypy_grpc" ]] || die "protoc-gen-mypy_grpc not found next to $PYTHON (pip install -e '.[test]')"
  "$PYTHON" -m grpc_tools.protoc -I"$PROTO_ROOT" --plugin=protoc-gen-mypy_grpc="$mypy_grpc" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" --mypy_grpc_out=quiet:"$out" "${protos[@]}"
}

# Every package directory between paymesh/ and a stub needs an __init__.py.
package_dirs() {
  list_stubs "$1" | while read -r stub; do
    local dir; dir="$(dirname "$stub")"
    echo "$dir"; dirname "$dir"
  done | LC_ALL=C sort -u
}

cmd_generate() {
  local stub dir
  TMP="$(mktemp -d)"
  generate_into "$TMP"
  list_stubs . | while read -r stub; do rm -f "$stub"; done
  list_stubs "$TMP" | while read -r stub; do
    mkdir -p "$(dirname "$stub")"; cp "$TMP/$stub" "$stub"
  done
  package_dirs "$TMP" | while read -r dir; do
    [[ -e "$dir/__init__.py" ]] || : >"$dir/__init__.py"
  done
  echo "generated $(list_stubs . | wc -l) stub files from $PROTO_ROOT/"
}

cmd_check() {
  local stale=0 stub dir buf
  TMP="$(mktemp -d)"
  generate_into "$TMP"
  if ! diff <(list_stubs .) <(list_stubs "$TMP") >"$TMP/list.diff"; then
    echo "stub files missing (>) or without a .proto (<):" >&2
    grep '^[<>]' "$TMP/list.diff" >&2
    stale=1
  fi
  while read -r stub; do
    if [[ -f "$stub" ]] && ! cmp -s "$stub" "$TMP/$stub"; then
      echo "differs: $stub" >&2
      diff -u "$stub" "$TMP/$stub" | head -n 20 >&2 || true
      stale=1
    fi
  done < <(list_stubs "$TMP")
  while read -r dir; do
    [[ -f "$dir/__init__.py" ]] || { echo "missing: $dir/__init__.py" >&2; stale=1; }
  done < <(package_dirs "$TMP")
  [[ $stale -eq 0 ]] || die "generated stubs are stale: run make proto"
  buf="$(find_buf)"
  "$buf" lint || die "buf lint failed"
  echo "stubs fresh, buf lint clean"
}

case "${1:-}" in
  generate) cmd_generate ;;
  check) cmd_check ;;
  *) usage ;;
esac
