"""Fleet operations (SPEC sections 3, 7, 8): the desired/reported
configuration cycle with self-revert, ``fleet push`` / ``fleet status`` from
the centre, logs on demand and credential rotation. docs/fleet.md."""

from .member import Member

__all__ = ["Member"]
