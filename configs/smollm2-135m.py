"""Model preset `smollm2-135m` (see lwm/models/presets.py) with the default mesh."""

from lwm.models.presets import base_config


def get_config():
    return base_config("smollm2-135m")
