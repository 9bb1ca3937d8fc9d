"""Model preset `llama-3.2-1b` (see lwm/models/presets.py) with the default mesh."""

from lwm.models.presets import base_config


def get_config():
    return base_config("llama-3.2-1b")
