"""Model access: loading a local folder, one adapter per family, the inputs of a forward pass, named hook points and
attention capture."""
