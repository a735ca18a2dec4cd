"""Serving the reasoning model: the Reasoner gRPC service (`service`), the checks and decoding of
the images it receives (`images`), request → inspection (`request`), its Prometheus metrics
(`metrics`) and JSON logs (`logs`). `triton_engine` is the engine that talks to Triton.
Run it with `foveal serve reasoner`; see services/reasoner/README.md."""
