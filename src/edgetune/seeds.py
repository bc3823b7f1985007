"""Seed mixing: decorrelated seeds for every (run, step, tensor, round, client).

MeZO regenerates its perturbation from a per-step seed, a federated client draws its own
stream per round, and a server replays a client's steps from the same seeds, so all of them
derive seeds here, the same way.
"""

_MASK = (1 << 64) - 1


def mix_seed(a: int, b: int) -> int:
    """splitmix64 of (a, b): a 63-bit seed, decorrelated for consecutive a or b."""
    x = (a * 0x9E3779B97F4A7C15 + b + 1) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) >> 1
