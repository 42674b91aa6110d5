# A small serving image: the base install only (onnxruntime, no torch), run as a non-root user.
#   docker build -t recblr-serve .
#   docker run -p 8000:8000 -v "$PWD/cell.onnx:/models/cell.onnx:ro" recblr-serve
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY recblr recblr
COPY kernels kernels
COPY export export
COPY runtime runtime
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 recblr \
    && mkdir /data && chown recblr /data
USER recblr
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["recblr-serve", "--onnx", "/models/cell.onnx", "--host", "0.0.0.0", "--port", "8000", "--state", "/data/recblr-state.db"]
