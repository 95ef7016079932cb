"""What the stand-ins share, one module per job: ``faults`` (the fault model), ``control``
(the ``/__standin__/`` API and its client), ``http`` (replies and the request handler),
``standin`` (the HTTPS stand-in base) and ``cli`` (``python -m`` scaffolding). Certificates,
the server thread and the state-saving loop live in ``standins.tls``."""
