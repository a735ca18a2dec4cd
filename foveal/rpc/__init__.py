"""Converters between foveal's own types and the protobuf messages of `proto/foveal/v1` (whose
generated stubs live in `foveal.v1`). Messages are built and read only at the edges."""
