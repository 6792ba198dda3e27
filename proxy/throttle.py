"""Invalid-key floods on `/v1`, slowed per client address, in memory (no database, no Redis).

An address that presents more than AETHERGATE_INVALID_KEY_LIMIT unknown or
malformed keys within a minute is refused with 429 for the rest of that
minute, before any key it sends is looked at. Memory is bounded: at most
MAX_ADDRESSES are tracked, the oldest forgotten first.
"""

import time

WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 10_000


class InvalidKeyThrottle:
    """Counts failed authentications per address in fixed windows; `clock` is the time seam."""

    def __init__(self, limit: int, clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self._windows: dict[str, list] = {}  # address -> [window start, failures]

    def retry_after(self, address: str) -> float:
        """Seconds this address must wait before it may try again; 0 if it may now."""
        window = self._windows.get(address)
        if window is None or window[1] < self.limit:
            return 0.0
        left = window[0] + WINDOW_SECONDS - self.clock()
        if left <= 0:
            del self._windows[address]
            return 0.0
        return left

    def failed(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        if not self.limit:
            return
        now = self.clock()
        window = self._windows.get(address)
        if window is None or now - window[0] >= WINDOW_SECONDS:
            self._windows.pop(address, None)
            if len(self._windows) >= MAX_ADDRESSES:
                del self._windows[next(iter(self._windows))]
            self._windows[address] = [now, 1]
        else:
            window[1] += 1
