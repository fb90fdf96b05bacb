"""The OpenAI-compatible gateway: routes a chat completion to a catalog tier and calls that tier's model upstream.

:mod:`router.gateway.upstreams` reads the deployment's upstreams file (where each model is served, which key to use);
:mod:`router.gateway.upstream_client` calls those upstreams (pooling, concurrency caps, circuit breakers).
"""
