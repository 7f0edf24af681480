"""Bounds on a generation request, shared by the generator (torch) and the HTTP ingress, which
checks them without importing torch."""

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed
MAX_TRUNCATION = 4.0  # beyond 4 standard deviations a cut changes almost no draw
