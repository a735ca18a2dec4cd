"""Write a labelled folder into PostgreSQL as inspections a QA reviewer has reviewed, for measuring
`foveal retrain` on data the model has not seen.

Each item of `--data` (single images) becomes a frame and an inspection written through the
ingest worker's write path (`foveal.dashboard.sample.write_inspection`), carrying the answer the
model gave in `--predictions` (the `predictions.jsonl` of `foveal eval` on that folder). Then a
simulated reviewer, who knows the labels, reviews every one: a good part the model passed is
confirmed and one it flagged rejected; a defect gets the `box` action with the labelled type
and box (the dashboard's `b` key), which confirms or corrects it in one step.

    foveal eval --bench /work/data/plant30 --model models/foveal_vl/1/weights \
        --out /work/data/exp30/plant30-eval
    .venv/bin/python bench/reviewed_from_labels.py --data /work/data/plant30 \
        --predictions /work/data/exp30/plant30-eval/predictions.jsonl --line line-30

The database is the one the settings name (`FOVEAL_DATABASE_URL`, else the embedded stack's).
A rerun writes everything again as new frames: use a fresh database or another `--line`.
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

from rich.progress import track

from foveal import blobs
from foveal.dashboard import sample
from foveal.dashboard.reviews import ReviewRequest, record_review
from foveal.domain import NO_DEFECT, Taxonomy
from foveal.plant.dataset import read_labels
from foveal.settings import load_settings
from foveal.storage import repository as repo
from foveal.storage.database import make_engine, session_factory


def inspection_of(record: dict, version: str) -> repo.NewInspection:  # type: ignore[type-arg]
    steps = tuple(repo.NewStep(index=k, operation=step["operation"] or "answer",
                               arguments=step["arguments"] or {}, text=step["text"], error=step["error"],
                               duration_ms=float(step["latency_ms"]))
                  for k, step in enumerate(record["steps"]))
    verdict, kind = record["verdict"], record["defect_type"]
    if verdict != "uncertain":  # the contract: type none exactly when ok
        kind = NO_DEFECT if verdict == "ok" else kind
    box = tuple(record["bbox"]) if record["bbox"] else None
    return repo.NewInspection(verdict=verdict, defect_type=kind, confidence=float(record["confidence"]),
                              box=box, model_name="foveal_vl", model_version=version,  # type: ignore[arg-type]
                              operations=int(record["operations"]), latency_ms=float(record["latency_ms"]),
                              timings={}, steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--line", default="line-reviewed")
    parser.add_argument("--reviewer", default="qa-sim")
    parser.add_argument("--model-version", default="1")
    args = parser.parse_args()
    settings = load_settings()
    store = blobs.store_for(settings)
    engine = make_engine(settings.postgres_url, pool_size=1, max_overflow=0)
    sessions = session_factory(engine)
    records = [json.loads(line) for line in args.predictions.read_text().splitlines()]
    answers = {record["image"]: record for record in records}
    labels = [label for label in read_labels(args.data) if label.image]
    counts = {"confirm": 0, "reject": 0, "box": 0}
    for label in track(labels, description="writing reviewed inspections"):
        record = answers[label.id]
        image = (args.data / label.image).read_bytes()  # type: ignore[operator]
        frame_id = sample.write_inspection(sessions, store, image, label.width, label.height, label.product,
                                           sample.Where(args.line, "station-1"),
                                           inspection_of(record, args.model_version))
        if label.defect_type == NO_DEFECT:
            request = ReviewRequest("confirm" if record["verdict"] == "ok" else "reject", uuid.uuid4())
        else:
            request = ReviewRequest("box", uuid.uuid4(), defect_type=label.defect_type,
                                    box=tuple(label.bbox))  # type: ignore[arg-type]
        with sessions() as session, session.begin():
            found = repo.find_inspection(session, frame_id)
            assert found is not None
            record_review(session, found.id, args.reviewer, request, Taxonomy())
        counts[request.action] += 1
    engine.dispose()
    print(json.dumps({"items": len(labels), "line": args.line, **counts}))


if __name__ == "__main__":
    main()
