"""The Lambda artifact and the deployed stack: build it (pip wheels for Amazon Linux 2023, pruned), gate it
(every ELF file loads on Lambda's glibc/libstdc++), check it on arm64 under qemu, read template.yaml, and
run a whole bucket through the deployed Distributed Map. ``make build``, ``make check-arm64``,
``make classify-bucket``. Imports ``lambda_function`` only.
"""
