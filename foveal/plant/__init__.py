"""Plant data: the procedural renderer of inspection frames, the dataset format they are
written in (images + `labels.jsonl`), FovealBench, and importers for real plant data."""
