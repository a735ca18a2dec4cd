"""The embedded stack: Kafka (Tansu), PostgreSQL and Triton, started from pinned wheels.

`Stack(settings).up()` starts what is not running, waits until each part is healthy, creates
the topics and migrates the schema; `status()` reports each part; `down()` stops them and leaves
no process behind. Parts whose endpoint variable is set are external: checked, never started.
The CLI (`foveal stack up|down|status`) and the tests both drive this class.
"""

from foveal.stack.part import Health, Part
from foveal.stack.stack import PartStatus, Stack

__all__ = ["Health", "Part", "PartStatus", "Stack"]
