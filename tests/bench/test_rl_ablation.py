"""`bench/rl_ablation.py`: the ablation table marks a difference as real only beyond the spread of eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "rl_ablation.py"


def _eval_dir(root: Path, name: str, type_accuracy: float, interval: tuple[float, float]) -> Path:
    folder = root / name
    folder.mkdir()
    overall = dict(n=100, image_f1=0.7, type_accuracy=type_accuracy, false_reject_at_escape=0.9,
                   overall_accuracy=0.3, rapr=0.4, false_reject_rate=0.4, operation_error_rate=0.0,
                   box_hit_rate=0.5)
    intervals = dict(image_f1=[0.65, 0.75], type_accuracy=list(interval), false_reject_at_escape=[0.85, 0.95],
                     overall_accuracy=[0.25, 0.35], rapr=[0.35, 0.45])
    (folder / "metrics.json").write_text(json.dumps(dict(overall=overall, intervals=intervals)))
    return folder


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_difference_counts_only_beyond_both_intervals(tmp_path: Path) -> None:
    sft = _eval_dir(tmp_path, "sft", 0.12, (0.10, 0.14))
    far = _eval_dir(tmp_path, "far", 0.20, (0.17, 0.23))
    near = _eval_dir(tmp_path, "near", 0.135, (0.11, 0.16))
    log = tmp_path / "log"
    log.mkdir()
    (log / "metrics.jsonl").write_text("\n".join(json.dumps(dict(
        episode=e, queries=8, rollouts=64, queries_seen=8 * e, accuracy=a, reward=a, reward_total=a,
        rapr=r, rapr_by_difficulty={}, op_error_rate=0.5, curiosity=0.0, penalty=0.0, uniform_share=0.1))
        for e, a, r in ((1, 0.2, 0.4), (2, 0.3, 0.35))) + "\n")
    out = tmp_path / "ablation.json"
    result = _run(f"sft={sft}", f"far={far}:{log}", f"near={near}", "--out", str(out))
    assert result["reference"] == "sft"
    far_type = result["models"]["far"]["vs_reference"]["type_accuracy"]
    assert far_type["better"] and far_type["beyond_spread"]
    assert abs(far_type["delta"] - 0.08) < 1e-9
    near_type = result["models"]["near"]["vs_reference"]["type_accuracy"]
    assert near_type["better"] and near_type["beyond_spread"] is False
    assert result["models"]["far"]["rl"]["episodes"] == 2
    assert result["models"]["far"]["rl"]["rapr_last"] == 0.35
    assert json.loads(out.read_text()) == result


def test_a_missing_eval_folder_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), f"sft={tmp_path / 'nothing'}"],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "metrics.json does not exist" in done.stderr
