"""Network profiles: what moving a client's bytes costs in time on a given link.

time(bytes) = round-trip latency + 8 * bytes / bandwidth, separately for the way up (client to
server) and down. The numbers are representative values, rounded, each with where it comes
from; they are not measurements of any particular network. Pass your own with
`Network(name, up_mbps, down_mbps, rtt_ms, source)` when you know your link.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgetune.errors import EdgetuneError


@dataclass(frozen=True)
class Network:
    """A link: bandwidth in Mbit/s each way and round-trip latency in milliseconds."""

    name: str
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    source: str

    def up_s(self, nbytes: int) -> float:
        return self.rtt_ms / 1e3 + 8 * nbytes / (self.up_mbps * 1e6)

    def down_s(self, nbytes: int) -> float:
        return self.rtt_ms / 1e3 + 8 * nbytes / (self.down_mbps * 1e6)

    def to_dict(self) -> dict:
        return asdict(self)


NETWORKS: dict[str, Network] = {
    n.name: n
    for n in (
        Network(
            "3g", 0.75, 1.6, 150.0,
            "Chrome DevTools throttling preset 'Fast 3G' (1.6 Mbit/s down, 750 kbit/s up, "
            "150 ms RTT; Lighthouse calls the same figures 'slow 4G')",
        ),
        Network(
            "4g", 8.0, 25.0, 50.0,
            "rounded typical LTE figures (Opensignal mobile network experience reports, "
            "LTE download in the 15-40 Mbit/s range, uplink a third of it, ~50 ms latency)",
        ),
        Network(
            "5g", 20.0, 200.0, 25.0,
            "rounded typical 5G (sub-6 GHz) figures (Opensignal 5G experience reports: "
            "download 100-400 Mbit/s, upload 15-50 Mbit/s, 20-30 ms latency)",
        ),
        Network(
            "wifi", 50.0, 100.0, 10.0,
            "a home Wi-Fi 5 link behind a 100/50 Mbit/s access line, ~10 ms to the server",
        ),
        Network(
            "ethernet", 940.0, 940.0, 1.0,
            "gigabit Ethernet (1000BASE-T) TCP goodput ~940 Mbit/s, 1 ms in a LAN",
        ),
    )
}  # fmt: skip


def get_network(name: str) -> Network:
    if name not in NETWORKS:
        raise EdgetuneError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    return NETWORKS[name]


def round_times(
    net: Network, bytes_up: int, bytes_down: int, compute_s: float
) -> dict[str, float | None]:
    """Transfer times of one client's round on `net` and its compute/communication ratio."""
    up, down = net.up_s(bytes_up), net.down_s(bytes_down)
    return {
        "up_s": up,
        "down_s": down,
        "comm_s": up + down,
        "compute_s": compute_s,
        "compute_comm_ratio": compute_s / (up + down) if up + down > 0 else None,
    }
