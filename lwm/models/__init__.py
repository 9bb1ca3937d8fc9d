"""Model assembly: configs and the LLaMA/LWM transformer."""
