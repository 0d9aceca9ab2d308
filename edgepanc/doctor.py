"""What this machine offers edgepanc: Python, torch and CUDA, CPU features, ONNX Runtime,
TensorRT, NVML, temperature sensors, cores and memory.

Each probe is a small function returning a JSON-ready dict; :func:`collect_report` runs them all
and turns a probe that fails into ``{"error": ...}`` so one broken library never hides the rest.
Optional libraries (torch, onnxruntime, torch_tensorrt, pynvml) are imported inside their probe,
so the report works, and says "not installed", without them. Sizes are bytes in keys that end
in ``_bytes``; the text table prints them in IEC units.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from edgepanc.memory import available_memory, cgroup_memory, format_size, total_memory
from edgepanc.thermal import NvmlSource, PsutilSource, SysfsSource, ThermalLimits
from edgepanc.version import __version__

Report = dict[str, dict[str, Any]]

CPUINFO_PATH = Path("/proc/cpuinfo")

# Flags that decide which fast paths exist: INT8 dot products (VNNI, Arm dotprod/i8mm), bf16
# arithmetic, and Intel AMX tiles that oneDNN uses for bf16/INT8 matmuls and convolutions.
X86_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


def _not_installed(module: str) -> dict[str, Any]:
    return {"installed": False, "note": f"{module} is not installed"}


def probe_python() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def probe_platform() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "platform": platform.platform(),
    }


def probe_edgepanc() -> dict[str, Any]:
    return {"version": __version__, "location": str(Path(__file__).resolve().parent)}


def probe_torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return _not_installed("torch")
    import torch

    info: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,  # None on a CPU build
    }
    if info["cuda_available"]:
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["devices"] = [
            _torch_device(torch, index) for index in range(torch.cuda.device_count())
        ]
    return info


def _torch_device(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
    }


def cpu_flags(cpuinfo_text: str) -> tuple[str, set[str]]:
    """``("x86"|"arm"|"unknown", flags)`` from the text of ``/proc/cpuinfo``.

    x86 lists ``flags``, Arm lists ``Features``; every core repeats them, the first line suffices.
    """
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key == "flags":
            return "x86", set(value.split())
        if sep and key == "features":
            return "arm", set(value.split())
    return "unknown", set()


def _cpu_model(cpuinfo_text: str) -> str:
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("model name", "hardware", "cpu model"):
            return value.strip()
    return platform.processor() or "unknown"


def probe_cpu(cpuinfo_path: Path = CPUINFO_PATH) -> dict[str, Any]:
    info: dict[str, Any] = {
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
    }
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use (taskset, containers)
        info["usable_cores"] = len(os.sched_getaffinity(0))
    try:
        text = cpuinfo_path.read_text()
    except OSError:
        info["model"] = platform.processor() or "unknown"
        info["features"] = f"unknown ({cpuinfo_path} unreadable)"
        return info
    arch, flags = cpu_flags(text)
    wanted = X86_FEATURES if arch == "x86" else ARM_FEATURES if arch == "arm" else ()
    info["model"] = _cpu_model(text)
    info["features"] = {name: name in flags for name in wanted}
    return info


def probe_memory() -> dict[str, Any]:
    cgroup = cgroup_memory()
    return {
        "total_bytes": total_memory(),
        "available_bytes": available_memory(),
        "cgroup_limit_bytes": cgroup[0] if cgroup else None,
    }


def probe_onnxruntime() -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        return _not_installed("onnxruntime")
    import onnxruntime

    return {
        "installed": True,
        "version": onnxruntime.__version__,
        "device": onnxruntime.get_device(),
        "providers": onnxruntime.get_available_providers(),
    }


def probe_tensorrt() -> dict[str, Any]:
    info: dict[str, Any] = {}
    for module, dist in (("torch_tensorrt", "torch-tensorrt"), ("tensorrt", "tensorrt")):
        if importlib.util.find_spec(module) is None:
            info[module] = "not installed"
            continue
        try:
            # Import, not only find: a torch_tensorrt built for another torch or CUDA fails here.
            imported = __import__(module)
            info[module] = getattr(imported, "__version__", None) or importlib.metadata.version(
                dist
            )
        except Exception as exc:
            info[module] = f"installed but not importable: {type(exc).__name__}: {exc}"
    return info


def probe_nvml() -> dict[str, Any]:
    if importlib.util.find_spec("pynvml") is None:
        return _not_installed("pynvml (nvidia-ml-py)")
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"available": False, "note": f"NVML did not start: {exc}"}
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "temperature_c": pynvml.nvmlDeviceGetTemperature(
                        handle, pynvml.NVML_TEMPERATURE_GPU
                    ),
                    "memory_bytes": int(memory.total),
                    "memory_used_bytes": int(memory.used),
                }
            )
        return {
            "available": True,
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "gpus": gpus,
        }
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # older pynvml releases return bytes
    return value.decode() if isinstance(value, bytes) else value


def probe_sensors() -> dict[str, Any]:
    nvml = NvmlSource()
    try:
        readings = {
            "nvml": nvml.read(),
            "psutil": PsutilSource().read(),
            "sysfs": SysfsSource().read(),
        }
    finally:
        nvml.close()
    found = [name for name, values in readings.items() if values]
    limits = ThermalLimits()
    return {
        "thermal_protection": f"on ({', '.join(found)})" if found else "off (no sensor found)",
        "limits_c": {"cpu": limits.cpu_c, "gpu": limits.gpu_c},
        **{f"{name}_c": values for name, values in readings.items()},
    }


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "edgepanc": probe_edgepanc,
    "python": probe_python,
    "platform": probe_platform,
    "cpu": probe_cpu,
    "memory": probe_memory,
    "torch": probe_torch,
    "onnxruntime": probe_onnxruntime,
    "tensorrt": probe_tensorrt,
    "nvml": probe_nvml,
    "sensors": probe_sensors,
}


def run_probe(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The probe's result, or ``{"error": ...}`` if it raised."""
    try:
        return probe()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def collect_report(probes: Mapping[str, Callable[[], dict[str, Any]]] = PROBES) -> Report:
    """Every probe's result by section name, in order."""
    return {name: run_probe(probe) for name, probe in probes.items()}


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, int | float):
        return format_size(value)
    if isinstance(value, Mapping):
        if not value:
            return "none"
        return ", ".join(f"{_label(k)} {_format_value(k, v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_format_value(key, v) for v in value) or "none"
    return str(value)


def _label(key: str) -> str:
    # the unit shows in the value ("1.50 GiB"), so the text drops it from the name
    return key.removesuffix("_bytes")


def format_report(report: Report) -> str:
    """A plain-text table: one block per section, ``key  value`` lines aligned."""
    lines: list[str] = []
    for section, fields in report.items():
        lines.append(section)
        if section == "recommended" and "train" in fields:
            lines.extend(_recommended_lines(fields))
            continue
        width = max((len(_label(k)) for k in fields), default=0)
        for key, value in fields.items():
            if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                lines.append(f"  {_label(key)}")  # one line per device
                lines.extend(f"    - {_format_value(key, item)}" for item in value)
            else:
                lines.append(f"  {_label(key):<{width}}  {_format_value(key, value)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _recommended_lines(fields: Mapping[str, Any]) -> list[str]:
    """The recommended commands (the section ``edgepanc doctor`` adds last, from
    :func:`edgepanc.recipes.machine.recommended_commands`), each under its reason."""
    return [
        f"  # recipe {fields['recipe']}: {fields['recipe_reason']}",
        f"  {fields['train']}",
        f"  # backend {fields['backend']}: {fields['backend_reason']}",
        f"  {fields['run']}",
        "",
    ]
