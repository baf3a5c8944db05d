"""``python -m relay``: the ``relay`` command."""

from relay.cli.main import main

main()
