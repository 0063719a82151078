"""udaseg: unsupervised domain adaptation for semantic segmentation with PyTorch Lightning."""
