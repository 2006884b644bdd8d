#!/usr/bin/env bash
# frugal serve on the GPU, end to end, run ON THE GPU MACHINE from the repository root after a
# CUDA build (build-gpu/, or FRUGAL_BUILD_DIR): trains configs/tiny.toml for a few steps on the
# GPU (on docs/MODEL.md as text), serves the checkpoint with --device cuda [--weights W], and sends
# a completion, a streaming chat completion and a malformed request with curl, each with a
# bounded wait. Exit status 0 only if every answer is what the API promises.
#
#   scripts/gpu_serve_check.sh [--weights bf16|fp8] [--speculative]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${FRUGAL_BUILD_DIR:-build-gpu}
frugal=$build/frugal
serve_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --weights) serve_flags+=(--weights "$2"); shift 2 ;;
    --speculative) serve_flags+=(--speculative); shift ;;
    *) echo "gpu_serve_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$frugal" ] || { echo "gpu_serve_check: $frugal not found" >&2; exit 1; }
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "gpu_serve_check: FAIL: $*" >&2; [ -f "$work/serve.log" ] && tail -5 "$work/serve.log" >&2; exit 1; }

"$frugal" train configs/tiny.toml --train.device=cuda --train.precision=bf16 --train.steps=20 \
  --train.eval_every=0 --train.save_every=0 --train.log_every=10 --data.train_path=docs/MODEL.md \
  --train.out_dir="$work/run" > "$work/train.log" 2>&1 || { tail "$work/train.log"; fail "training"; }
"$frugal" serve "$work/run" --device cuda --port 0 --model-name tiny "${serve_flags[@]}" > "$work/serve.log" 2>&1 &
server=$!
port=""
for _ in $(seq 1 120); do
  port=$(grep -oE "listening on [^ ]*:[0-9]+" "$work/serve.log" | grep -oE "[0-9]+$" | head -1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || fail "the server exited"
  sleep 0.5
done
[ -n "$port" ] || fail "the server did not start listening within 60 s"
grep -m1 "listening" "$work/serve.log"
base=http://127.0.0.1:$port

code=$(curl -s -m 60 -o "$work/completion.json" -w "%{http_code}" "$base/v1/completions" \
  -H "Content-Type: application/json" \
  -d '{"model": "tiny", "prompt": "The model", "max_tokens": 24, "temperature": 0}')
[ "$code" = 200 ] || fail "completion: HTTP $code: $(cat "$work/completion.json")"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['choices'][0]['text']; \
assert r['usage']['completion_tokens']>0; print('completion:', repr(t))" "$work/completion.json" \
  || fail "completion: bad JSON"

code=$(curl -s -N -m 60 -o "$work/chat.sse" -w "%{http_code}" "$base/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16, "stream": true}')
[ "$code" = 200 ] || fail "streaming chat: HTTP $code"
chunks=$(grep -c '^data: {' "$work/chat.sse")
grep -q '^data: \[DONE\]' "$work/chat.sse" || fail "streaming chat: no [DONE]"
echo "streaming chat: $chunks chunks, then [DONE]"

code=$(curl -s -m 30 -o "$work/bad.json" -w "%{http_code}" "$base/v1/completions" \
  -H "Content-Type: application/json" -d '{"prompt": ')
[ "$code" = 400 ] || fail "malformed request: HTTP $code, expected 400"
echo "malformed request: HTTP 400"
echo "gpu_serve_check: ok (${serve_flags[*]:-bf16})"
