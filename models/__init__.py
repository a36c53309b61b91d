"""Small reference CNNs trained on Fashion-MNIST (see models/README.md)."""
