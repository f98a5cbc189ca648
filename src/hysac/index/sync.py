"""Stage 3b — bring an index in line with a source it was built from (every ``build``/``add`` run).

Rerunning ``hysac index build SRC --out DIR`` (or ``hysac index add SRC``) over a source whose rows or files
changed must not leave the old versions searchable. Before encoding anything, :func:`plan_sync` reads the source
once (keys and content fingerprints only, nothing is encoded) and compares it with the live items of the same
source — the items committed by earlier runs over the same path and kind (``sources`` table) — deciding per item:

``keep``
    the key is live and its recorded fingerprint equals the source's (same text; same image size and mtime):
    nothing is encoded or written.
``encode``
    a new key, or a live key whose content changed (an edited image file; a text/metadata change of a row gives a
    new key, see below). The new version is encoded and committed; the old one it replaces (same key, or for a
    table row the same row number) is tombstoned **in the same transaction** — never both live, never neither.
``rename``
    a table row whose key changed only because rows above it were inserted or deleted (its row number moved): a
    live item of the same source that left the source carries exactly the same content and fingerprint. Its key
    and metadata are updated in place — same id, same vector, nothing re-encoded.

Live items of the source whose key is no longer in it (deleted rows, deleted image files, the old wording of an
edited row) are **removed** at the end of the run: ``items.removed`` is set (a tombstone, see
:mod:`~hysac.index.store`), search never returns them, and their stale error rows are dropped.

Crash safety: every write is one SQLite transaction (renames per batch, encode+replace per committed batch,
removals at the end), so a ``kill -9`` anywhere leaves a consistent index; the next run plans again from what was
committed and finishes the job (what was already synced is then ``keep``).

Items written before fingerprints were recorded (format 1) are judged without re-encoding where that is safe: a
text by its stored text; an image whose file was last modified before the run that indexed it started is kept
(and its fingerprint recorded), any other one is re-encoded.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import defaultdict
from dataclasses import dataclass, field

from .reader import Source, content_fingerprint, key_slot
from .store import IndexStore

__all__ = ["KEEP", "ENCODE", "RENAME", "DONE", "SyncPlan", "plan_sync", "source_scope", "pair_signature"]

KEEP, ENCODE, RENAME, DONE = "keep", "encode", "rename", "done"

#: (modality, image path or "" for a text, fingerprint): what two items must share to have the same embedding
Signature = tuple[str, str, str]


def pair_signature(modality: str, content: str, fingerprint: str) -> Signature:
    return (modality, content if modality == "image" else "", fingerprint)


@dataclass
class SyncPlan:
    """What one run does to the index, decided before it encodes anything (see the module docstring)."""

    source_id: int | None
    #: ids of the ``sources`` rows of this source (same path and kind): its items are the ones synced
    scope: list[int]
    #: source key → KEEP / ENCODE / RENAME, then DONE once the run handled it
    decisions: dict[str, str] = field(default_factory=dict)
    #: key → id of the live item its new version replaces (tombstoned in the commit of the new version)
    replace: dict[str, int] = field(default_factory=dict)
    #: key → (id of the live item that takes this key, the signature the source item must still have)
    renames: dict[str, tuple[int, Signature]] = field(default_factory=dict)
    #: live items of the scope whose key left the source: removed at the end, unless renamed meanwhile
    gone: set[int] = field(default_factory=set)
    #: live items of an older writer found unchanged: id → fingerprint to record
    adopt: dict[int, str] = field(default_factory=dict)
    renamed_ids: set[int] = field(default_factory=set)
    #: what the run did: items kept (moved rows included), re-encoded in place of an old version, removed
    unchanged: int = 0
    updated: int = 0
    removed: int = 0


def source_scope(store: IndexStore, source: Source) -> list[int]:
    """Ids of the ``sources`` rows recorded for this source by earlier (and the current) runs."""
    d = source.describe()
    paths = {os.path.realpath(d["path"]), os.path.normpath(os.path.abspath(os.path.expanduser(str(d["path"]))))}
    q = "SELECT id FROM sources WHERE kind=? AND path IN (%s) ORDER BY id" % ",".join("?" * len(paths))
    return [int(r[0]) for r in store.conn.execute(q, (d["kind"], *sorted(paths)))]


def _started_ns(store: IndexStore) -> dict[int, int]:
    """Source run id → its start time (ns since the epoch; the recorded time is truncated to the second)."""
    out = {}
    for s in store.sources():
        try:
            t = _dt.datetime.fromisoformat(str(s["started"]))
        except (TypeError, ValueError):
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        out[int(s["id"])] = int(t.timestamp()) * 1_000_000_000
    return out


def legacy_fingerprint(modality: str, content: str, started_ns: int | None) -> str | None:
    """The fingerprint an item written without one (format 1) can safely be given now, or None (re-encode it).

    A text: the fingerprint of its stored text. An image: the file's current ``stat`` fingerprint when the file
    was last modified before the run that indexed it started (it cannot have changed since it was encoded)."""
    if modality != "image":
        return content_fingerprint(modality, content) or None
    fp = content_fingerprint("image", content)
    if not fp or started_ns is None:
        return None
    try:
        mtime_ns = int(fp.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None
    return fp if mtime_ns < started_ns else None


def plan_sync(store: IndexStore, source: Source, source_id: int | None, *, batch_size: int = 4096) -> SyncPlan:
    """Read ``source`` (no encoding) and decide what the run does to the live items (see the module docstring)."""
    plan = SyncPlan(source_id=source_id, scope=source_scope(store, source))
    started = _started_ns(store)
    sigs: dict[str, Signature] = {}
    fresh: list[str] = []
    for batch in source.batches(batch_size):
        new = []
        for it in batch:
            if it.key not in sigs:
                sigs[it.key] = pair_signature(it.modality, it.content, it.fingerprint)
                new.append(it)
        live = store.live_by_keys(it.key for it in new)
        for it in new:
            row = live.get(it.key)
            if row is None:
                fresh.append(it.key)
                continue
            oid, omod, ocontent, ofp, osrc = row
            legacy = ofp is None
            if legacy:
                ofp = legacy_fingerprint(omod, ocontent, started.get(osrc) if osrc is not None else None)
            if it.fingerprint and omod == it.modality and ocontent == it.content and ofp == it.fingerprint:
                plan.decisions[it.key] = KEEP
                if legacy:
                    plan.adopt[oid] = it.fingerprint
            else:
                plan.decisions[it.key] = ENCODE
                plan.replace[it.key] = oid

    # live items of this source that left it: pair them with the new keys (moved rows), else remove them
    orphans = [r for r in store.live_of_sources(plan.scope, lean=True) if r[1] not in sigs]
    pool: dict[Signature, list[int]] = defaultdict(list)
    for oid, _key, mod, content, fp, src in orphans:
        if fp is None:
            fp = legacy_fingerprint(mod, content, started.get(src) if src is not None else None)
        if fp:
            pool[pair_signature(mod, content, fp)].append(oid)
    encode_new: list[str] = []
    for key in fresh:
        sig = sigs[key]
        ids = pool.get(sig) if sig[2] else None
        if ids:
            plan.decisions[key] = RENAME
            plan.renames[key] = (ids.pop(0), sig)
        else:
            plan.decisions[key] = ENCODE
            encode_new.append(key)
    # an edited table row: its new version replaces the old one of the same row number (reported as updated)
    renamed = {oid for oid, _ in plan.renames.values()}
    by_slot: dict[str, list[int]] = defaultdict(list)
    for oid, key, *_ in orphans:
        if oid not in renamed and key_slot(key) != key:
            by_slot[key_slot(key)].append(oid)
    for key in encode_new:
        slot = key_slot(key)
        if slot != key and by_slot.get(slot):
            plan.replace[key] = by_slot[slot].pop(0)
    plan.gone = {r[0] for r in orphans}
    return plan
