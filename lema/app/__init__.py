"""The application layer: the `lema` command, the demo and `lema up`; it may import every other part of lema."""
