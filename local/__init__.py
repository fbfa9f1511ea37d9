"""The function and the page on this machine: ``make demo`` (the handler on samples/), ``make invoke-local``
(the built artifact under awslambdaric on a loopback Runtime API), ``make web`` (the in-browser page), and
the one loopback HTTP server they and the tests share. Builds on ``deploy`` and ``lambda_function``.
"""
