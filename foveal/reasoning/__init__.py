"""Pixel-space reasoning: the inspection prompt and the multi-turn loop that lets a model zoom
into the original pixels (or select frames) before it answers. Knows nothing of Kafka, gRPC,
HTTP or SQL; eval, predict and the reasoning service all call it."""
