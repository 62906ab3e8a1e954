"""Where an imported document came from: the record kept with it and with every chunk.

The hash is of the bytes as received, so that a later import of the same file is recognisable
and a document can be traced to the exact file it was read from; the importer and its version
say which code read it, so that documents read by an importer later found wrong can be found
and read again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime

__all__ = ["Provenance"]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Who imported what, when, and with which importer."""

    source: str  # the file's name or the URL it came from ("upload" when neither is known)
    user: str | None  # who imported it; None for imports no user asked for
    imported_at: datetime  # when, in UTC
    sha256: str  # of the bytes as received, in hex
    size: int  # in bytes
    importer: str  # "pypdf", "trafilatura" or "selftune-text"
    importer_version: str  # the importer's version: pypdf's and trafilatura's own

    @property
    def importer_label(self) -> str:
        """The importer and its version in one string, such as ``"pypdf 7.1.1"``."""
        return f"{self.importer} {self.importer_version}"

    @classmethod
    def record(
        cls,
        data: bytes,
        *,
        source: str | None,
        user: str | None,
        importer: str,
        importer_version: str,
        at: datetime | None = None,
    ) -> Provenance:
        """The provenance of ``data``, read by ``importer`` at ``at`` (now when not given; a
        naive time is taken as UTC)."""
        when = at or datetime.now(UTC)
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        return cls(
            source=source or "upload",
            user=user,
            imported_at=when,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            importer=importer,
            importer_version=importer_version,
        )
