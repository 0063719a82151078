"""udaseg: unsupervised domain adaptation for semantic segmentation with PyTorch Lightning."""

import os

# albumentations checks PyPI for a newer release when it is imported (a DNS query and an HTTPS
# connection, synchronous): udaseg promises no network, and behind a firewall that drops
# packets the check stalls every command. Set before any udaseg module imports it; a user who
# wants the check can still set the variable to 0 beforehand.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
