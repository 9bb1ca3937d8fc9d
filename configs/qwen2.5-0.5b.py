"""Model preset `qwen2.5-0.5b` (see lwm/models/presets.py) with the default mesh."""

from lwm.models.presets import base_config


def get_config():
    return base_config("qwen2.5-0.5b")
