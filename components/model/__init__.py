"""Model layer: test metrics, the end-to-end classifier (image in, class out), its registry and prediction."""
