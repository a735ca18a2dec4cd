"""A real Reasoner gRPC service on a random micro model, as a process of its own, for the ingest
drills (tests/pipeline/test_ingest_drills.py) that must stop and restart the reasoner.

`python -m tests.pipeline.reasoner_process --port P --blob-root DIR` serves `ServerThread` with
`LocalEngine` on the `micro` preset (seed 0: every process answers alike; the answers are
noise, the plumbing is what the drills check) until SIGTERM / SIGINT, then stops gracefully.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--blob-root", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    from foveal.model.loader import create
    from foveal.model.tokenizer import train_tokenizer
    from foveal.reasoning.engine import LocalEngine
    from foveal.reasoning.loop import LoopOptions
    from foveal.serving.service import ServerThread, ServiceConfig
    from tests.conftest import MICRO_CORPUS

    torch.set_num_threads(args.threads)
    model = create(train_tokenizer(MICRO_CORPUS * 8, vocab_size=400), "micro", seed=0)
    config = ServiceConfig(port=args.port, metrics_port=None, blob_root=args.blob_root, health_poll_s=0.05,
                           grace_s=1.0, max_concurrency=8, loop=LoopOptions(max_turn_tokens=8))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with ServerThread(LocalEngine(model), config) as server:
        print(f"serving on {server.address}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
