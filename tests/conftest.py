"""Shared test settings: small thread pools keep CI on 2 cores predictable."""

import torch

torch.set_num_threads(1)
