#!/usr/bin/env bash
# deploy/gcp/function-smoke.sh [--bundle DIR]: build the Cloud Function the
# way Google's Go buildpack does (GoogleCloudPlatform/buildpacks,
# cmd/go/functions_framework), run it, and invoke it. The closest check of
# a deploy that needs no GCP project.
#
# The buildpack steps, as this script repeats them:
#  1. the upload: the bundle deploy/gcp/stage-function.sh stages (or the
#     staged DIR given with --bundle), copied to
#     WORKSPACE/serverless_function_source_code;
#  2. parse the root package's .go files (imports only): one package, not
#     main; the module path's first element has a dot; read the
#     functions-framework-go version from go.mod (v1.9.2 when absent, as
#     the buildpack injects it);
#  3. pick the main template by the buildpack's rule: the root imports
#     .../functions-framework-go/functions -> "declarative" (blank-import
#     the root, serve FUNCTION_TARGET from the registry); else framework
#     >= v1.1.0 -> "v1.1" (register(root.<FUNCTION_TARGET>)); else "v0";
#  4. write main.go at functions.local/app INSIDE the function's module,
#     run `go mod tidy` at the module root, `go build` the main with cgo;
#  5. run it with PORT and FUNCTION_TARGET=Handler (K_SERVICE as on Cloud
#     Run) next to an aggregator on an embedded broker, POST a real job:
#     expect 200 with a training summary, 400 on bad JSON, and Cloud
#     Logging JSON lines carrying the request's trace.
#
# Our contract is stricter than the buildpack: the staged root must compile
# under BOTH the declarative and the v1.1 template, and must import the
# functions package (so the buildpack picks the declarative one). The
# script fails when the root lacks that import, and builds the other
# template too and checks that it serves the same handler.
# deploy/gcp/function-smoke-selftest.sh shows that the check can fail.
#
# Needs Go with cgo (gcc), curl, python3, and the module cache or the Go
# module proxy. Prints "function-smoke: PASS ..." or "function-smoke: FAIL:
# ..." and exits non-zero on failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

readonly FF_MODULE=github.com/GoogleCloudPlatform/functions-framework-go
readonly FF_FUNCTIONS=$FF_MODULE/functions
readonly FF_INJECTED=v1.9.2 # the version the buildpack adds when go.mod has none
readonly APP_DIR=functions.local/app
readonly TARGET=Handler

bundle=""
while (($# > 0)); do
  case $1 in
    --bundle) bundle=${2:?--bundle needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "function-smoke: unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "function-smoke: $*"; }
fail() { echo "function-smoke: FAIL: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ---- 1. the upload ---------------------------------------------------------
if [[ -z $bundle ]]; then
  say "staging the bundle"
  bash "$repo/deploy/gcp/stage-function.sh" "$work/bundle" >/dev/null
  bundle=$work/bundle
fi
[[ -f $bundle/go.mod ]] || fail "$bundle has no go.mod at its root"

# fresh_source NAME copies the upload to NAME/serverless_function_source_code
# (the buildpack moves the upload there) and prints that directory.
fresh_source() {
  local src=$work/$1/serverless_function_source_code
  mkdir -p "$src"
  cp -a "$bundle/." "$src/"
  printf '%s\n' "$src"
}

# ---- 2. what the buildpack reads from the source -------------------------------
# A small Go program reads the root's .go files with go/parser, imports only,
# as the buildpack's converter does (test files included: they are in the
# directory it parses).
mkdir -p "$work/rootpkg"
cat >"$work/rootpkg/main.go" <<'GO'
// Command rootpkg prints the package name of the .go files in a directory,
// then their imports, one per line. It fails on two package names.
package main

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

func main() {
	files, err := filepath.Glob(filepath.Join(os.Args[1], "*.go"))
	if err != nil || len(files) == 0 {
		fmt.Fprintf(os.Stderr, "no Go files in %s\n", os.Args[1])
		os.Exit(1)
	}
	fset := token.NewFileSet()
	name := ""
	seen := map[string]bool{}
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if name != "" && af.Name.Name != name {
			fmt.Fprintf(os.Stderr, "two packages in %s: %s and %s\n", os.Args[1], name, af.Name.Name)
			os.Exit(1)
		}
		name = af.Name.Name
		for _, im := range af.Imports {
			p, err := strconv.Unquote(im.Path.Value)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			seen[p] = true
		}
	}
	imports := make([]string, 0, len(seen))
	for p := range seen {
		imports = append(imports, p)
	}
	sort.Strings(imports)
	fmt.Println(name)
	for _, p := range imports {
		fmt.Println(p)
	}
}
GO
root_info=$(cd "$work/rootpkg" && go run main.go "$bundle") ||
  fail "the buildpack could not parse the root package of $bundle"
root_pkg=$(head -n 1 <<<"$root_info")
[[ $root_pkg != main ]] || fail "the root package is package main; the buildpack wants a library package"
imports_functions=0
if tail -n +2 <<<"$root_info" | grep -qxF "$FF_FUNCTIONS"; then imports_functions=1; fi

module=$(cd "$bundle" && go list -m)
[[ ${module%%/*} == *.* ]] || fail "module path $module: its first element needs a dot"
ff_version=$(cd "$bundle" && { go list -m -f '{{.Version}}' "$FF_MODULE" 2>/dev/null || true; })
ff_version=${ff_version:-$FF_INJECTED}

# at_least VERSION MIN: semantic version VERSION >= MIN (vX.Y.Z).
at_least() {
  local a=${1#v} b=${2#v}
  a=${a%%[-+]*}
  [[ $(printf '%s\n%s\n' "$b" "$a" | sort -V | head -n 1) == "$b" ]]
}

# ---- 3. the buildpack's template rule ------------------------------------------
if ((imports_functions)); then
  chosen=declarative
elif at_least "$ff_version" v1.1.0; then
  chosen=v1.1
else
  chosen=v0
fi
say "root package $root_pkg of $module, functions-framework-go $ff_version; imports $FF_FUNCTIONS: $( ((imports_functions)) && echo yes || echo no) -> template $chosen"

# ---- 4. generate main, tidy, build -----------------------------------------------
# write_main TEMPLATE FILE writes the generated main (our words, the
# buildpack's behaviour) importing the root package as $module.
write_main() {
  local tmpl=$1 file=$2
  case $tmpl in
    declarative)
      cat >"$file" <<GO
// Generated by deploy/gcp/function-smoke.sh like the Go buildpack's main
// for a root package that imports the functions package: importing the
// root runs its init functions, which register the entry points by name;
// funcframework serves the one FUNCTION_TARGET names at "/".
package main

import (
	"log"
	"net/http"
	"os"

	_ "$module"

	"$FF_MODULE/funcframework"
)

func main() {
	// These two paths never reach the user's function.
	http.HandleFunc("/robots.txt", http.NotFound)
	http.HandleFunc("/favicon.ico", http.NotFound)

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("function server: %v", err)
	}
}
GO
      ;;
    v1.1)
      cat >"$file" <<GO
// Generated by deploy/gcp/function-smoke.sh like the Go buildpack's main
// for a root package that does not import the functions package, with
// functions-framework-go v1.1.0 or newer: it refers to the exported
// FUNCTION_TARGET of the root package by name and registers it at "/" as
// an HTTP, CloudEvent or background-event function, by its type.
package main

import (
	"context"
	"log"
	"net/http"
	"os"

	userfunction "$module"

	"$FF_MODULE/funcframework"
	cloudevents "github.com/cloudevents/sdk-go/v2"
)

func register(fn any) error {
	ctx := context.Background()
	switch f := fn.(type) {
	case func(http.ResponseWriter, *http.Request):
		return funcframework.RegisterHTTPFunctionContext(ctx, "/", f)
	case func(context.Context, cloudevents.Event) error:
		return funcframework.RegisterCloudEventFunctionContext(ctx, "/", f)
	default:
		return funcframework.RegisterEventFunctionContext(ctx, "/", fn)
	}
}

func main() {
	if err := register(userfunction.$TARGET); err != nil {
		log.Fatalf("registering the function: %v", err)
	}
	http.HandleFunc("/robots.txt", http.NotFound)
	http.HandleFunc("/favicon.ico", http.NotFound)

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("function server: %v", err)
	}
}
GO
      ;;
    v0)
      cat >"$file" <<GO
// Generated by deploy/gcp/function-smoke.sh like the Go buildpack's main
// for functions-framework-go before v1.1.0: it registers the root
// package's exported FUNCTION_TARGET at "/" with the old API.
package main

import (
	"log"
	"net/http"
	"os"

	userfunction "$module"

	"$FF_MODULE/funcframework"
)

func main() {
	var fn any = userfunction.$TARGET
	if h, ok := fn.(func(http.ResponseWriter, *http.Request)); ok {
		funcframework.RegisterHTTPFunction("/", h)
	} else {
		funcframework.RegisterEventFunction("/", fn)
	}
	http.HandleFunc("/robots.txt", http.NotFound)
	http.HandleFunc("/favicon.ico", http.NotFound)

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := funcframework.Start(port); err != nil {
		log.Fatalf("function server: %v", err)
	}
}
GO
      ;;
  esac
}

# buildpack_build TEMPLATE OUT: a fresh copy of the upload, main at
# functions.local/app inside the module, `go mod tidy` at the module root,
# `go build` with cgo from the module root, as the buildpack runs them.
buildpack_build() {
  local tmpl=$1 out=$2 src
  src=$(fresh_source "build-$tmpl")
  if [[ -z $(cd "$src" && go list -m -f '{{.Version}}' "$FF_MODULE" 2>/dev/null) ]]; then
    (cd "$src" && go mod edit -require "$FF_MODULE@$FF_INJECTED")
  fi
  mkdir -p "$src/$APP_DIR"
  write_main "$tmpl" "$src/$APP_DIR/main.go"
  (cd "$src" && go mod tidy) >"$work/tidy-$tmpl.log" 2>&1 || {
    cat "$work/tidy-$tmpl.log" >&2
    fail "go mod tidy in the function's module failed (template $tmpl)"
  }
  say "building $APP_DIR (template $tmpl) with CGO_ENABLED=1"
  (cd "$src" && CGO_ENABLED=1 go build -o "$out" "$src/$APP_DIR") >"$work/build-$tmpl.log" 2>&1 || {
    cat "$work/build-$tmpl.log" >&2
    fail "the buildpack's build with template $tmpl does not compile"
  }
}

buildpack_build "$chosen" "$work/fn"
((imports_functions)) ||
  fail "the root package does not import $FF_FUNCTIONS, so the buildpack picks template $chosen, not declarative (stage with deploy/gcp/stage-function.sh)"
buildpack_build v1.1 "$work/fn-v1.1"
(cd "$repo" && go build -o "$work/aggregator" ./aggregator)

# ---- 5. run and invoke ---------------------------------------------------------------
# start_fn BINARY PORT NAME starts a built function as Cloud Run would.
start_fn() {
  PORT=$2 FUNCTION_TARGET=$TARGET K_SERVICE=fdx-smoke GOOGLE_CLOUD_PROJECT=smoke-project \
    "$1" >"$work/$3.out" 2>"$work/$3.err" &
  pids+=("$!")
  wait_port 127.0.0.1 "$2" 60 || { cat "$work/$3.err" >&2; fail "$3 did not listen on PORT=$2"; }
}

bport=$(free_port)
fport=$(free_port)
job="smoke-$$"
"$work/aggregator" --embedded --broker "127.0.0.1:$bport" --job "$job" --minclients 1 --numrounds 1 \
  --dataset synthetic --eval-examples 200 --log-to text >"$work/aggregator.log" 2>&1 &
agg=$!
pids+=("$agg")
wait_port 127.0.0.1 "$bport" 60 || { cat "$work/aggregator.log" >&2; fail "aggregator's broker did not come up"; }
start_fn "$work/fn" "$fport" fn

say "POST a job to the function (template $chosen)"
code=$(curl -sS -o "$work/resp.json" -w '%{http_code}' --max-time 120 \
  -H 'Content-Type: application/json' \
  -H 'X-Cloud-Trace-Context: 0123456789abcdef0123456789abcdef/123;o=1' \
  -d "{\"broker\": \"127.0.0.1:$bport\", \"client_id\": \"0\", \"channel\": \"kafka\", \"job\": \"$job\"}" \
  "http://127.0.0.1:$fport/")
cat "$work/resp.json"
echo
[[ $code == 200 ]] || fail "HTTP $code"
grep -q '"round":1' "$work/resp.json" || fail "no round 1 in the summary"
grep -q '"examples":' "$work/resp.json" || fail "no examples in the summary"

code=$(curl -sS -o "$work/bad.json" -w '%{http_code}' -d '{"broker": ' "http://127.0.0.1:$fport/")
[[ $code == 400 ]] || fail "malformed JSON answered $code, want 400"

for _ in $(seq 1 300); do
  kill -0 "$agg" 2>/dev/null || break
  sleep 0.2
done
wait "$agg" || { cat "$work/aggregator.log" >&2; fail "aggregator did not finish the job"; }

grep -q '"severity":"INFO"' "$work/fn.out" || { cat "$work/fn.out" >&2; fail "no Cloud Logging severity field in the function's stdout"; }
grep -q '"logging.googleapis.com/trace":"projects/smoke-project/traces/0123456789abcdef0123456789abcdef"' "$work/fn.out" ||
  { cat "$work/fn.out" >&2; fail "no trace field in the function's log"; }

# The v1.1 main serves the same handler: our JSON errors, not the
# framework's.
vport=$(free_port)
start_fn "$work/fn-v1.1" "$vport" fn-v1.1
code=$(curl -sS -o "$work/v11.json" -w '%{http_code}' -d '{"broker": ' "http://127.0.0.1:$vport/")
if [[ $code != 400 ]] || ! grep -q '"error":' "$work/v11.json"; then
  fail "template v1.1: malformed JSON answered $code $(cat "$work/v11.json"), want 400 with our JSON error"
fi
code=$(curl -sS -o "$work/v11get.json" -w '%{http_code}' "http://127.0.0.1:$vport/")
[[ $code == 405 ]] || fail "template v1.1: GET answered $code, want 405"

say "PASS (buildpack template $chosen built at $APP_DIR and invoked: 200 with a training summary, 400 on bad JSON, Cloud Logging fields; template v1.1 also builds and serves the handler)"
