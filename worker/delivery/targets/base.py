"""What every destination kind raises when it did not take the objects."""

from __future__ import annotations


class DeliveryError(RuntimeError):
    """A destination did not take the objects; ``destination`` names it."""

    def __init__(self, destination: str, reason: str) -> None:
        self.destination = destination
        self.reason = reason
        super().__init__(f"destination {destination}: {reason}")
