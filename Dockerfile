# CPU image. For NVIDIA GPUs build Dockerfile.gpu instead (see README).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/keras

WORKDIR /work
COPY pyproject.toml README.md ./
COPY tlcli ./tlcli
# tensorflow-cpu on amd64, tensorflow on arm64 (pyproject.toml picks), LiteRT on both.
RUN pip install .

# Runs land in /work/runs; mount it to keep them, and /keras to reuse downloaded weights:
#   docker run --rm -v "$PWD/data:/data" -v "$PWD/runs:/work/runs" -v "$HOME/.keras:/keras" tlcli train /data
VOLUME ["/work/runs", "/keras"]
ENTRYPOINT ["tlcli"]
CMD ["--help"]
