"""The status-pull cache of one provider lane.

A final status never changes, so it is kept for good (bounded by `MAX_ENTRIES`, oldest forgotten
first); a pending one is kept for the lane's tunable `status_cache_ttl_s`. Pulls that must see
the provider's present answer (confirming a callback, resolving an ambiguous outcome) bypass it.
The counters feed the optimizer's `CacheTtlTuner`: queries, hits, and stale hits (cached answers
a later pull found had already changed).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mcp_autonomy.providers.base import ProviderTransaction

MAX_ENTRIES = 10_000
"""Entries per provider; a busy provider's final statuses beyond this are pulled again if asked."""


@dataclass
class _Entry:
    txn: ProviderTransaction
    stored_at_s: float
    hits: int = 0


class StatusCache:
    """Per-reference cache of status pulls with TTL for pending answers (see the module docstring)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self.queries = 0
        self.hits = 0
        self.stale_hits = 0

    def get(self, reference: str, now_s: float, ttl_s: float) -> ProviderTransaction | None:
        """A cached answer still valid at `now_s`, counting the query (and the hit)."""
        self.queries += 1
        entry = self._entries.get(reference)
        if entry is None:
            return None
        if not entry.txn.status.is_final and (ttl_s <= 0 or now_s - entry.stored_at_s >= ttl_s):
            return None
        entry.hits += 1
        self.hits += 1
        return entry.txn

    def put(self, reference: str, txn: ProviderTransaction, now_s: float) -> None:
        """Store a fresh pull; if it changed what cached hits had served, those hits were stale."""
        previous = self._entries.get(reference)
        if previous is not None and previous.hits and previous.txn.status is not txn.status:
            self.stale_hits += previous.hits
        self._entries[reference] = _Entry(txn, now_s)
        self._entries.move_to_end(reference)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, reference: str) -> None:
        """Drop one entry (an operator resolved the payment by hand)."""
        self._entries.pop(reference, None)

    def __len__(self) -> int:
        return len(self._entries)
