"""The local engine, chosen explicitly, and the one-line name of the engine a run uses.

Beam's ``DirectRunner`` first tries to download and start its Prism runner and, when that fails,
falls back to the in-process FnApiRunner, saying so only at INFO level. On a machine that can reach
the download a run would then use a different engine than the one m3w's tests and memory figures
describe. ``LocalRunner`` is what ``DirectRunner`` runs for a batch pipeline once Prism is out of
the way: the FnApiRunner, with the pipeline options handed to its worker processes (so they get
the same log level and pickler as the driver).
"""
from __future__ import annotations

from typing import Any

from apache_beam.runners.runner import PipelineRunner

LOCAL_RUNNER = f"{__name__}.LocalRunner"


class LocalRunner(PipelineRunner):
    """Beam's FnApiRunner; ``--direct_running_mode`` and ``--direct_num_workers`` apply as usual."""

    def run_pipeline(self, pipeline: Any, options: Any) -> Any:
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=info).run_pipeline(pipeline, options)


def engine_name(options: Any) -> str:
    """One line naming the engine a run uses, e.g. ``Beam FnApiRunner, 2 worker processes``."""
    from apache_beam.options.pipeline_options import DirectOptions, FlinkRunnerOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    runner_name = runner if isinstance(runner, str) else type(runner).__name__
    if runner_name in (LOCAL_RUNNER, "LocalRunner"):
        direct = options.view_as(DirectOptions)
        mode = direct.direct_running_mode or "in_memory"
        if mode == "in_memory":
            return "Beam FnApiRunner, in this process (local; Prism not used)"
        kind = "processes" if mode == "multi_processing" else "threads"
        n = direct.direct_num_workers or 1
        return f"Beam FnApiRunner, {n} worker {kind} (local; Prism not used)"
    short = runner_name.rsplit(".", 1)[-1]
    if short in ("DirectRunner", "SwitchingDirectRunner"):
        return f"Beam {short} (Beam chooses Prism or its FnApiRunner)"
    all_opts = options.get_all_options()
    where = {
        "FlinkRunner": options.view_as(FlinkRunnerOptions).flink_master,
        "SparkRunner": all_opts.get("spark_master_url"),
        "PortableRunner": all_opts.get("job_endpoint"),
    }.get(short)
    name = f"Beam {short}" + (f" at {where}" if where else "")
    env = all_opts.get("environment_type")
    if env:
        config = all_opts.get("environment_config") if env.upper() == "EXTERNAL" else None
        name += f", {env.upper()} workers" + (f" at {config}" if config else "")
    return name


def workers_share_cwd(options: Any) -> bool:
    """Whether the runner's workers open relative paths as this process does.

    The local engine's workers are this process or its children; LOOPBACK workers run in this
    process. A cluster's (or an EXTERNAL/DOCKER/PROCESS pool's) workers run elsewhere, where a
    relative path names another file or none.
    """
    from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

    env = (options.view_as(PortableOptions).environment_type or "").upper()
    if env == "LOOPBACK":
        return True
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    short = (runner if isinstance(runner, str) else type(runner).__name__).rsplit(".", 1)[-1]
    local = short in ("LocalRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner")
    return local and env in ("", "BEAM_PYTHON_EMBEDDED")
