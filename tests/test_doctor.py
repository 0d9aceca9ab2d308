"""`edgepanc doctor`: the report's sections, JSON output, and robustness to missing libraries."""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from edgepanc import __version__
from edgepanc.cli import main
from edgepanc.doctor import (
    PROBES,
    collect_report,
    cpu_flags,
    format_report,
    probe_cpu,
    probe_torch,
)

X86_CPUINFO = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes asimddp
"""


def test_doctor_json_reports_every_section():
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert list(report) == [*PROBES, "recommended"]  # the commands recommended here, last
    assert report["edgepanc"]["version"] == __version__
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["torch"]["installed"] is True
    assert isinstance(report["torch"]["cuda_available"], bool)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert {"torch_tensorrt", "tensorrt"} <= set(report["tensorrt"])
    assert report["memory"]["total_bytes"] >= report["memory"]["available_bytes"] > 0
    assert report["cpu"]["logical_cores"] >= 1
    assert report["sensors"]["thermal_protection"].startswith(("on", "off"))
    assert report["sensors"]["limits_c"] == {"cpu": 68.0, "gpu": 72.0}


def test_doctor_text_is_a_readable_table():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for section in PROBES:
        assert section in lines  # each section heads its own block
    assert any(line.split() == ["version", __version__] for line in lines)
    assert "thermal_protection" in result.output
    assert "iB" in result.output  # memory printed in units, not raw bytes


def test_torch_missing_is_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert probe_torch() == {"installed": False, "note": "torch is not installed"}


def test_a_failing_probe_does_not_hide_the_others():
    def broken() -> dict:
        raise RuntimeError("driver exploded")

    report = collect_report({"ok": lambda: {"value": 1}, "broken": broken})
    assert report == {"ok": {"value": 1}, "broken": {"error": "RuntimeError: driver exploded"}}
    assert "RuntimeError: driver exploded" in format_report(report)


def test_cpu_flags_for_x86_and_arm():
    arch, flags = cpu_flags(X86_CPUINFO)
    assert arch == "x86" and {"avx512_vnni", "amx_bf16"} <= flags
    arch, flags = cpu_flags(ARM_CPUINFO)
    assert arch == "arm" and "asimddp" in flags and "avx2" not in flags
    assert cpu_flags("") == ("unknown", set())


def test_probe_cpu_reports_vnni_amx_and_bf16(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86_CPUINFO.replace(" amx_int8", ""))
    info = probe_cpu(cpuinfo)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["features"]["avx512_vnni"] is True
    assert info["features"]["avx512_bf16"] is True
    assert info["features"]["amx_bf16"] is True
    assert info["features"]["amx_int8"] is False

    missing = probe_cpu(tmp_path / "absent")
    assert "unreadable" in missing["features"]


def test_format_report_prints_sizes_and_one_line_per_device():
    report = {
        "torch": {
            "cuda_available": True,
            "devices": [
                {"index": 0, "name": "H100", "memory_bytes": 80 * 2**30},
                {"index": 1, "name": "H100", "memory_bytes": 80 * 2**30},
            ],
        }
    }
    text = format_report(report)
    assert "cuda_available  yes" in text
    assert text.count("    - index 0, name H100, memory 80.00 GiB") == 1
    assert text.count("    - index") == 2
