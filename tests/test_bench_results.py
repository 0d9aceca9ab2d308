"""bench/RESULTS.md rendering: the peer and coarse-to-fine tables carry the computed ratios."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from results import Spread, render_markdown  # noqa: E402


def spread(*values: float) -> dict:
    return asdict(Spread.of(list(values)))


def test_peer_rows_state_how_much_faster_and_smaller_edgepanc_is() -> None:
    results = {
        "sections": {
            "end_to_end": [
                {
                    "case": "full",
                    "path": "edgepanc run (suite)",
                    "shape": [300, 512, 512],
                    "seconds": spread(10.0, 11.0, 12.0),
                    "peak_rss_bytes": 500 * 2**20,
                }
            ],
            "peers": [
                {
                    "peer": "nnunet",
                    "case": "full",
                    "seconds": spread(110.0),
                    "peak_rss_bytes": 2000 * 2**20,
                    "whole_dsc": 0.991,
                    "lesion_dsc": 0.9,
                    "reference_whole_dsc": {"peer": 0.7002, "ours": 0.9104},
                }
            ],
            "coarse_to_fine": [
                {
                    "case": "full",
                    "roi_on": spread(10.0, 10.0),
                    "roi_off": spread(60.0, 62.0),
                    "speedup": 3.2,
                    "tiling_on": spread(4.0, 4.0),
                    "tiling_off": spread(40.0, 41.0),
                    "tiling_speedup": 10.0,
                    "box_fraction": 0.05,
                    "tiles_on": 40,
                    "tiles_off": 900,
                    "whole_dsc": 0.995,
                    "lesion_dsc": 0.97,
                }
            ],
        }
    }
    text = render_markdown(results)
    peer_row = next(line for line in text.splitlines() if line.startswith("| nnunet"))
    assert "| 10.00x |" in peer_row  # 110 s against our median of 11 s
    assert "| 0.25 |" in peer_row  # 500 MB against 2000 MB
    assert peer_row.endswith("| 0.7002 / 0.9104 |")  # each mask against the reference label
    c2f_row = next(line for line in text.splitlines() if "| 10.00x |" in line)
    assert "| 3.20x |" in c2f_row and "5.0%" in c2f_row
    assert "40 / 900" in c2f_row and "0.9950" in c2f_row


def test_recorder_keeps_each_measurement_on_disk_as_it_comes(tmp_path: Path) -> None:
    import json

    from results import Recorder

    path = tmp_path / "results.json"
    recorder = Recorder(path=path)
    recorder.record("peers", peer="monai", case="full", seconds=spread(3.0))
    assert json.loads(path.read_text())["sections"]["peers"][0]["peer"] == "monai"
    recorder.record("peers", peer="nnunet", case="full", seconds=spread(9.0))
    assert len(json.loads(path.read_text())["sections"]["peers"]) == 2


def test_merging_a_separate_session_replaces_what_it_remeasures_and_keeps_the_rest() -> None:
    sys.path.insert(0, str(BENCH.parent / "scripts"))
    from bench_results import merge_results

    old_peer = {"peer": "nnunet", "case": "full", "seconds": spread(300.0), "whole_dsc": 0.7}
    other_peer = {"peer": "monai", "case": "full", "seconds": spread(200.0), "whole_dsc": 0.8}
    gate = {"gate": "speed", "figure": "1.7x", "passed": True}
    results = {
        "machine": {"cpu": "x"},
        "sections": {"peers": [old_peer, other_peer], "gates": [gate]},
    }
    new_peer = {"peer": "nnunet", "case": "full", "seconds": spread(2400.0), "whole_dsc": 0.75}
    new_case = {"peer": "nnunet", "case": "quiz", "seconds": spread(90.0), "whole_dsc": 0.6}
    merged = merge_results(results, {"sections": {"peers": [new_peer, new_case]}})
    assert merged["sections"]["peers"] == [other_peer, new_peer, new_case]
    assert merged["sections"]["gates"] == [gate]
    assert merged["machine"] == {"cpu": "x"}
    assert results["sections"]["peers"] == [old_peer, other_peer]  # the input is not modified


def test_compression_table_lists_each_variant_with_its_speedup() -> None:
    def latency(ms: float) -> dict:
        return {"median_ms": ms, "min_ms": ms - 5, "max_ms": ms + 5, "runs": 7.0}

    record = {
        "patch": [32, 64, 64],
        "rounds": 7,
        "latency_ms": {"torch_fp32": latency(480.0), "onnx_int8_minmax": latency(96.0)},
        "speedup": {"torch_fp32": 1.0, "onnx_int8_minmax": 5.0},
        "best_int8": "onnx_int8_minmax",
        "pruned_int8": None,
    }
    text = render_markdown({"sections": {"compression": [record]}})
    assert "## Compression speed-ups" in text and "pruned + INT8: `none`" in text
    row = next(line for line in text.splitlines() if line.startswith("| onnx_int8_minmax"))
    assert "| 96.0 |" in row and "| 91.0-101.0 |" in row and "| 5.00x |" in row
