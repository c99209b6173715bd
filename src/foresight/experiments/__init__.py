"""One module per paper claim; each registers itself with foresight.core.registry."""
