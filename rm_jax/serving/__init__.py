"""``rm-jax serve``: an HTTP reward service for RL and rejection-sampling loops.

The modules follow a request through the server:

- :mod:`.settings`  ServeConfig: the knobs (limits, batching), checked once at start-up
- :mod:`.protocol`  bytes -> validated rows / texts (400 naming row and field), response bodies
- :mod:`.encoding`  rows -> token ids exactly as ``rm-jax score`` makes them; the over-length policy
- :mod:`.buckets`   the fixed (rows, seq_len, max_segments) shapes and packing rows into one of them
- :mod:`.batcher`   the one thread that owns the jitted scorer: queue, back-pressure, dynamic batches
- :mod:`.prometheus` Prometheus counters and histograms
- :mod:`.service`   the above joined: prepare a request, queue its rows, answer with rewards
- :mod:`.auth`      the optional API key (Bearer, constant-time) and the loopback-or-key rule for --host
- :mod:`.app`       the FastAPI app: endpoints, the key check, body limit, disconnects, error handling
- :mod:`.server`    load the model, run uvicorn, drain on SIGTERM
- :mod:`.client`    a standard-library client, and ``rm-jax serve`` as a subprocess (tests, load test)

See docs/serving.md. Imports: everything below it (core ... sweeps); only rm_jax.cli sits above.
"""
