"""The DPoser-X method: SDEs, score networks, normalisers, samplers, losses, the prior. torch + core only."""
