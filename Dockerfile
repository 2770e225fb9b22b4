# GPU training image: the official TensorFlow GPU image plus this package.
# Not built in this project's CI (no Docker engine there); see docs/serving.md, "Docker".
#   docker build -t cnn-apps:gpu .
#   docker run --gpus all -v $PWD/mlruns:/app/mlruns -v $PWD/exports:/app/exports \
#       cnn-apps:gpu cnn-apps all --config pipelines/configs/shapes_classification.yaml
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2

# Dependencies first (cached layer), then the code.
COPY setup.cfg pyproject.toml README.md ./
COPY cnn_apps/__init__.py cnn_apps/__init__.py
RUN python -m pip install --upgrade pip && python -m pip install .

COPY . .
RUN python -m pip install --no-deps .

CMD ["cnn-apps", "--help"]
