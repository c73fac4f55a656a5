"""The request path: the gRPC servicers, wire decoding, authentication and TLS, and the
hand-off to the worker thread (:mod:`.pipeline`)."""
