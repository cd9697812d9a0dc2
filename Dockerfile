# Beam SDK worker image with m3w and its pinned dependencies, for custom-container runs on
# Dataflow (--sdk_container_image), Flink and Spark (--environment_type=DOCKER
# --environment_config=IMAGE). The SDK version matches the pinned apache-beam.
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/m3w
COPY requirements.lock setup.py README.md ./
COPY schemas/ schemas/
COPY pipeline/ pipeline/
COPY dedup/ dedup/
COPY model/ model/
# pip compiles the text filter chain (pipeline/_textchain.c): the SDK image (Debian) normally
# has gcc; install it where it does not.
RUN command -v gcc >/dev/null || (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*)
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir -c requirements.lock .

# The SDK harness stays the entry point (set by the base image).
