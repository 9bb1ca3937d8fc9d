"""The `lwm` console script: thin argparse entry points over the library modules."""
