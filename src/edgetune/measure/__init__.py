"""Measurement: peak memory, step time, FLOPs and bytes saved for backward."""
