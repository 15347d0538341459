//! Layers with named parameters (names as in the PyTorch references) and the parameter store.
