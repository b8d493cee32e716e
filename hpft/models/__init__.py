"""Models: loading, the tiny configs and the embedded tiny-omni builder."""
