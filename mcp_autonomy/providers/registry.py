"""The providers the engine knows: their adapters, backup map and health.

The backup map (the original `setBackupProviders`) is validated on every change: backups must
be registered, a provider cannot back itself up, the map has no cycles, and a backup must share
at least one currency with its primary (it could not carry the primary's payments otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcp_autonomy.providers.base import ProviderAdapter
from mcp_autonomy.resilience.health import ProviderHealth


class UnknownProviderError(KeyError):
    """No provider of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) if self.known else "none registered"
        return f"unknown provider {self.name!r}; known providers: {known}"


class BackupMapError(ValueError):
    """A backup map that would be unsafe or meaningless."""


@dataclass
class ProviderEntry:
    """One registered provider."""

    name: str
    adapter: ProviderAdapter
    backups: list[str] = field(default_factory=list)
    critical: bool = False
    health: ProviderHealth = field(init=False)
    registered_at: float = 0.0
    initialized: bool = False
    last_init_error: str | None = None

    def __post_init__(self) -> None:
        self.health = ProviderHealth(self.name)


class ProviderRegistry:
    """Registered providers by name, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, ProviderEntry] = {}

    def register(
        self,
        adapter: ProviderAdapter,
        *,
        backups: list[str] | None = None,
        critical: bool = False,
        registered_at: float = 0.0,
    ) -> ProviderEntry:
        """Add (or replace) a provider. Backups are validated once all named ones exist."""
        entry = ProviderEntry(adapter.name, adapter, [], critical, registered_at=registered_at)
        self._entries[adapter.name] = entry
        if backups:
            self.set_backups(adapter.name, backups)
        return entry

    def get(self, name: str) -> ProviderEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownProviderError(name, self.names()) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ProviderEntry]:
        return list(self._entries.values())

    def backup_map(self) -> dict[str, list[str]]:
        return {name: list(e.backups) for name, e in self._entries.items() if e.backups}

    def set_backups(self, primary: str, backups: list[str]) -> list[str]:
        """Validate and set `primary`'s ordered backups; returns the previous list."""
        entry = self.get(primary)
        seen: set[str] = set()
        for backup in backups:
            if backup == primary:
                raise BackupMapError(f"{primary} cannot be its own backup")
            if backup not in self._entries:
                raise BackupMapError(
                    f"backup {backup!r} of {primary} is not a registered provider "
                    f"(registered: {', '.join(self.names())})"
                )
            if backup in seen:
                raise BackupMapError(f"backup {backup!r} is listed twice for {primary}")
            seen.add(backup)
            shared = (
                entry.adapter.capabilities.currencies & self._entries[backup].adapter.capabilities.currencies
            )
            if not shared:
                raise BackupMapError(
                    f"backup {backup!r} supports none of {primary}'s currencies "
                    f"({', '.join(sorted(entry.adapter.capabilities.currencies))})"
                )
        candidate = {n: list(e.backups) for n, e in self._entries.items()}
        candidate[primary] = list(backups)
        cycle = _find_cycle(candidate)
        if cycle:
            raise BackupMapError(f"backup map would have a cycle: {' -> '.join(cycle)}")
        previous = entry.backups
        entry.backups = list(backups)
        return previous


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in the backup graph as a path (first node repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in graph.get(node, []):
            found = visit(nxt)
            if found:
                return found
        visiting.pop()
        done.add(node)
        return None

    for start in graph:
        found = visit(start)
        if found:
            return found
    return None
