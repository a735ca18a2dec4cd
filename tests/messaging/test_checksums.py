"""kafka-python checksums every record batch it produces and (with `check_crcs`, on in the ingest
worker) every batch it consumes with CRC-32C. It does that in C only when the `crc32c` package
is importable; its pure-Python fallback costs ~115 ms per MiB, which on MB-sized frames would
cost the camera and the worker more CPU than the reasoner's decode.
Run: `.venv/bin/python -m pytest tests/messaging/test_checksums.py -q`.
"""

from __future__ import annotations

import kafka.record.util as kafka_util
from crc32c import crc32c
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder


def test_kafka_python_checksums_record_batches_with_the_c_extension() -> None:
    assert kafka_util.calc_crc32c is not None
    assert kafka_util.crc32c_c is crc32c  # not kafka.record._crc32c, the pure-Python fallback
    assert kafka_util.calc_crc32c(b"123456789") == 0xE3069283  # RFC 3720's check value


def test_a_built_batch_validates_and_a_flipped_byte_fails_its_crc() -> None:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 22)
    builder.append(0, timestamp=None, key=b"frame", value=bytes(range(256)) * 4096, headers=[])
    data = bytearray(builder.build())
    assert DefaultRecordBatch(bytes(data)).validate_crc()
    data[-100] ^= 0xFF  # inside the record's value
    assert not DefaultRecordBatch(bytes(data)).validate_crc()
