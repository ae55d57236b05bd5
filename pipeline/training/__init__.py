"""The train stage: torchrun worker (gloo/NCCL), checkpoints with resume, the Python launcher."""
