"""edgetune: fine-tune small language models on the device where they run."""

__version__ = "0.1.0"
