"""The spool's state database (SQLite, WAL, synchronous=FULL): instances received and units.

A unit is one SEG and the images it references. Its state moves ``waiting -> ready ->
enqueued -> prepared -> inferred -> done``, or to ``failed`` (common/units.py), or
``waiting -> timed_out``; a timed-out unit goes back to ``waiting`` when one of its objects
arrives after all (a late image, or the SEG sent again), so a study routed again by hand is
still processed. When each state was reached is kept per unit (``times``). ``ready`` is
set in the same transaction that records the unit's last missing object (the outbox pattern):
whatever crashes afterwards, the unit is found ready at the next start and enqueued then, and
only a unit recorded ``enqueued`` is never offered again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.progress import Progress
from common.spool_layout import SpoolLayout
from common.units import Unit, UnitState
from scp.spool import ObjectInfo

WAITING, READY, ENQUEUED, TIMED_OUT = (
    UnitState.WAITING,
    UnitState.READY,
    UnitState.ENQUEUED,
    UnitState.TIMED_OUT,
)

# Stamps the time a state was reached into the unit's ``times`` (bind: state, time).
_TIMES = "times = json_set(times, '$.' || ?, ?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    unit_id TEXT PRIMARY KEY,
    seg_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    referenced_uids TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    times TEXT NOT NULL DEFAULT '{}',
    offers INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS unit_refs (
    unit_id TEXT NOT NULL REFERENCES units(unit_id),
    sop_uid TEXT NOT NULL,
    PRIMARY KEY (unit_id, sop_uid)
);
CREATE INDEX IF NOT EXISTS unit_refs_by_sop ON unit_refs(sop_uid);
CREATE INDEX IF NOT EXISTS units_by_state ON units(state);
CREATE INDEX IF NOT EXISTS units_by_created ON units(created_at);
"""


class StateDB:
    """Thread-safe access to the state database; paths are stored relative to ``root``."""

    def __init__(self, db_path: str | Path, root: str | Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.root = Path(root).resolve() if root else self.db_path.resolve().parent
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.db_path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(_SCHEMA)
            columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(units)")}
            if "times" not in columns:  # a spool from before the unit timings
                self._conn.execute("ALTER TABLE units ADD COLUMN times TEXT NOT NULL DEFAULT '{}'")
            if "offers" not in columns:  # a spool from before the stall sweep
                self._conn.execute("ALTER TABLE units ADD COLUMN offers INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, taken immediately so concurrent writers queue, not deadlock."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # -- recording arrivals --------------------------------------------------------------------

    def record_instance(self, info: ObjectInfo, path: Path, now: float | None = None) -> list[str]:
        """Record a stored object; returns the ids of units it made ready (same transaction)."""
        now = time.time() if now is None else now
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO instances (sop_uid, sop_class, study_uid, path, received_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(sop_uid) DO UPDATE SET "
                "sop_class=excluded.sop_class, study_uid=excluded.study_uid, "
                "path=excluded.path, received_at=excluded.received_at",
                (info.sop_instance_uid, info.sop_class_uid, info.study_uid, self._rel(path), now),
            )
            if info.is_seg:
                touched = [self._record_seg(cur, info, now)]
            else:
                touched = [
                    row["unit_id"]
                    for row in cur.execute(
                        "SELECT u.unit_id FROM unit_refs r JOIN units u USING (unit_id) "
                        "WHERE r.sop_uid = ? AND u.state IN (?, ?)",
                        (info.sop_instance_uid, WAITING, TIMED_OUT),
                    ).fetchall()
                ]
                # A late image reopens a timed-out unit; its timeout counts from now.
                cur.executemany(
                    "UPDATE units SET state = ?, detail = '', last_received_at = ?, "
                    "updated_at = ? WHERE unit_id = ?",
                    [(WAITING, now, now, unit_id) for unit_id in touched],
                )
            ready = [u for u in touched if u and self._complete(cur, u)]
            cur.executemany(
                f"UPDATE units SET state = ?, updated_at = ?, {_TIMES} WHERE unit_id = ? "
                "AND state = ?",
                [(READY, now, READY, now, unit_id, WAITING) for unit_id in ready],
            )
        return ready

    def _record_seg(self, cur: sqlite3.Cursor, info: ObjectInfo, now: float) -> str:
        """Create the SEG's unit, or reopen a timed-out one (a resent SEG is a retry)."""
        unit_id = info.sop_instance_uid
        row = cur.execute("SELECT state FROM units WHERE unit_id = ?", (unit_id,)).fetchone()
        if row is None:
            cur.execute(
                "INSERT INTO units (unit_id, seg_uid, study_uid, referenced_uids, state, "
                "created_at, updated_at, last_received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    unit_id,
                    info.sop_instance_uid,
                    info.study_uid,
                    json.dumps(list(info.referenced_uids)),
                    WAITING,
                    now,
                    now,
                    now,
                ),
            )
            cur.executemany(
                "INSERT OR IGNORE INTO unit_refs (unit_id, sop_uid) VALUES (?, ?)",
                [(unit_id, uid) for uid in info.referenced_uids],
            )
        elif row["state"] in (WAITING, TIMED_OUT):
            cur.execute(
                "UPDATE units SET state = ?, detail = '', updated_at = ?, last_received_at = ? "
                "WHERE unit_id = ?",
                (WAITING, now, now, unit_id),
            )
        else:
            return ""  # already ready or further along: a resent SEG changes nothing
        return unit_id

    @staticmethod
    def _complete(cur: sqlite3.Cursor, unit_id: str) -> bool:
        missing = cur.execute(
            "SELECT COUNT(*) FROM unit_refs r LEFT JOIN instances i USING (sop_uid) "
            "WHERE r.unit_id = ? AND i.sop_uid IS NULL",
            (unit_id,),
        ).fetchone()[0]
        return missing == 0

    # -- state changes -------------------------------------------------------------------------

    def expire_waiting(
        self, timeout_s: float, now: float | None = None, *, fail: bool = False
    ) -> list[Unit]:
        """Close units still waiting ``timeout_s`` after their last object: ``timed_out`` (a late
        image reopens it) or, with ``fail``, ``failed`` for good. Returns them."""
        now = time.time() if now is None else now
        state = UnitState.FAILED if fail else TIMED_OUT
        with self._transaction() as cur:
            ids = [
                r["unit_id"]
                for r in cur.execute(
                    "SELECT unit_id FROM units WHERE state = ? AND last_received_at <= ?",
                    (WAITING, now - timeout_s),
                ).fetchall()
            ]
            cur.executemany(
                f"UPDATE units SET state = ?, updated_at = ?, detail = ?, {_TIMES} "
                "WHERE unit_id = ?",
                [(state, now, self._missing_reason(cur, i, timeout_s), state, now, i) for i in ids],
            )
        return [u for u in (self.get_unit(i) for i in ids) if u is not None]

    @staticmethod
    def _missing_reason(cur: sqlite3.Cursor, unit_id: str, timeout_s: float) -> str:
        missing = [
            r["sop_uid"]
            for r in cur.execute(
                "SELECT r.sop_uid FROM unit_refs r LEFT JOIN instances i USING (sop_uid) "
                "WHERE r.unit_id = ? AND i.sop_uid IS NULL",
                (unit_id,),
            )
        ]
        return f"incomplete after {timeout_s:g} s: image(s) {', '.join(missing)} never arrived"

    def mark_enqueued(self, unit_id: str, now: float | None = None) -> bool:
        """ready -> enqueued (its re-offers counted from 0); False if the unit was not ready."""
        now = time.time() if now is None else now
        with self._transaction() as cur:
            return (
                cur.execute(
                    f"UPDATE units SET state = ?, detail = '', updated_at = ?, offers = 0, "
                    f"{_TIMES} WHERE unit_id = ? AND state = ?",
                    (ENQUEUED, now, ENQUEUED, now, unit_id, READY),
                ).rowcount
                == 1
            )

    def offers(self, unit_id: str) -> int:
        """How often a stalled unit was offered to the queue again since it was enqueued."""
        with self._lock:
            row = self._conn.execute(
                "SELECT offers FROM units WHERE unit_id = ?", (unit_id,)
            ).fetchone()
            return int(row["offers"]) if row else 0

    def mark_reoffered(self, unit_id: str, detail: str, now: float | None = None) -> int:
        """A stalled unit in flight went to the queue again: back to ``enqueued``, its stall
        timer restarted, one more offer counted (returned; 0 if it was no longer in flight)."""
        now = time.time() if now is None else now
        in_flight = [s for s in UnitState if s.in_flight]
        with self._transaction() as cur:
            moved = cur.execute(
                "UPDATE units SET state = ?, detail = ?, updated_at = ?, offers = offers + 1 "
                f"WHERE unit_id = ? AND state IN ({', '.join('?' for _ in in_flight)})",
                (ENQUEUED, detail, now, unit_id, *in_flight),
            ).rowcount
            if not moved:
                return 0
            return int(
                cur.execute("SELECT offers FROM units WHERE unit_id = ?", (unit_id,)).fetchone()[0]
            )

    def set_state(
        self, unit_id: str, state: UnitState, detail: str = "", now: float | None = None
    ) -> bool:
        """Set a unit's state (the worker side: done / failed); False for an unknown unit."""
        if state not in set(UnitState):
            known = ", ".join(UnitState)
            raise ValueError(f"unknown unit state {state!r}; known: {known}")
        return self._move(unit_id, None, UnitState(state), detail, now)

    def record_progress(self, unit_id: str, progress: Progress) -> bool:
        """Take what the workers reported (common/progress.py): the state, when each stage was
        reached and a failure's reason. Only a unit still in flight moves; False otherwise."""
        in_flight = [s for s in UnitState if s.in_flight]
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT state, times FROM units WHERE unit_id = ?", (unit_id,)
            ).fetchone()
            if row is None or UnitState(row["state"]) not in in_flight:
                return False
            times = {**json.loads(row["times"]), **progress.at}
            detail = f"{progress.failure}: {progress.reason}" if progress.failure else ""
            cur.execute(
                "UPDATE units SET state = ?, detail = ?, updated_at = ?, times = ? "
                "WHERE unit_id = ?",
                (progress.state, detail, time.time(), json.dumps(times), unit_id),
            )
        return True

    def retry(self, unit_id: str, now: float | None = None) -> bool:
        """failed or timed_out -> ready (``molsub retry``): the dispatcher enqueues it again from
        its spooled objects. False for an unknown unit or one in another state."""
        now = time.time() if now is None else now
        with self._transaction() as cur:
            return (
                cur.execute(
                    "UPDATE units SET state = ?, detail = '', updated_at = ?, times = ?, "
                    "offers = 0 WHERE unit_id = ? AND state IN (?, ?)",
                    (READY, now, json.dumps({READY: now}), unit_id, UnitState.FAILED, TIMED_OUT),
                ).rowcount
                == 1
            )

    def _move(
        self,
        unit_id: str,
        from_state: UnitState | None,
        to_state: UnitState,
        detail: str,
        now: float | None,
    ) -> bool:
        now = time.time() if now is None else now
        sql = f"UPDATE units SET state = ?, detail = ?, updated_at = ?, {_TIMES} WHERE unit_id = ?"
        args: tuple[object, ...] = (to_state, detail, now, to_state, now, unit_id)
        if from_state is not None:
            sql += " AND state = ?"
            args += (from_state,)
        with self._transaction() as cur:
            return cur.execute(sql, args).rowcount == 1

    # -- queries -------------------------------------------------------------------------------

    def get_unit(self, unit_id: str) -> Unit | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM units WHERE unit_id = ?", (unit_id,)).fetchone()
            return self._unit(row) if row else None

    def list_units(self, state: UnitState | None = None) -> list[Unit]:
        """Units (all, or in one state), oldest first: the ``unit status`` listing."""
        return self._units_in(() if state is None else (state,))

    def ready_units(self) -> list[Unit]:
        return self.list_units(READY)

    def in_flight_units(self) -> list[Unit]:
        """Units handed to the workers and not finished (their progress is followed)."""
        return self._units_in(tuple(s for s in UnitState if s.in_flight))

    def _units_in(self, states: tuple[UnitState, ...]) -> list[Unit]:
        """Units in any of ``states`` (all units for none), oldest first."""
        sql = "SELECT * FROM units"
        if states:
            sql += f" WHERE state IN ({', '.join('?' for _ in states)})"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at, unit_id", states).fetchall()
            return [self._unit(r) for r in rows]

    def recent_units(
        self, since: float, state: UnitState | None = None, limit: int = 500
    ) -> list[Unit]:
        """Units received at or after ``since`` (all, or in one state), newest first, at most
        ``limit``: the status page's window."""
        sql = "SELECT * FROM units WHERE created_at >= ?"
        args: tuple[object, ...] = (since,)
        if state is not None:
            sql += " AND state = ?"
            args += (state,)
        with self._lock:
            rows = self._conn.execute(
                sql + " ORDER BY created_at DESC, unit_id DESC LIMIT ?", (*args, limit)
            ).fetchall()
            return [self._unit(r) for r in rows]

    def recent_unit_ids(self, since: float, limit: int = 500) -> list[str]:
        """The ids of ``recent_units(since)``, without building the units (no per-unit reads)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT unit_id FROM units WHERE created_at >= ? "
                "ORDER BY created_at DESC, unit_id DESC LIMIT ?",
                (since, limit),
            ).fetchall()
        return [r["unit_id"] for r in rows]

    def state_counts(self, since: float) -> dict[UnitState, int]:
        """How many units received at or after ``since`` are in each state (0 included)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, COUNT(*) AS n FROM units WHERE created_at >= ? GROUP BY state",
                (since,),
            ).fetchall()
        counts = dict.fromkeys(UnitState, 0)
        counts.update({UnitState(r["state"]): int(r["n"]) for r in rows})
        return counts

    def count_instances(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    # -- retention and purge (scp/retention.py, molsub/purge.py) -------------------------------

    def delivered_before(self, cutoff: float) -> list[Unit]:
        """Units done (results sent to every destination) at or before ``cutoff`` that still
        have a spooled object: what the retention policy removes."""
        sql = (
            "SELECT * FROM units u WHERE u.state = ? AND "
            "COALESCE(json_extract(u.times, '$.done'), u.updated_at) <= ? AND ("
            "EXISTS (SELECT 1 FROM instances i WHERE i.sop_uid = u.seg_uid) OR EXISTS "
            "(SELECT 1 FROM unit_refs r JOIN instances i USING (sop_uid) "
            "WHERE r.unit_id = u.unit_id)) ORDER BY u.created_at, u.unit_id"
        )
        with self._lock:
            rows = self._conn.execute(sql, (UnitState.DONE, cutoff)).fetchall()
            return [self._unit(r) for r in rows]

    def uids_to_keep(self, unit_ids: Collection[str], received_after: float) -> set[str]:
        """SOP Instance UIDs that retention keeps although units ``unit_ids`` are due: those of
        any other unit, and any object (re)received after ``received_after``."""
        ids = list(unit_ids)
        marks = ", ".join("?" for _ in ids) or "''"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT seg_uid AS uid FROM units WHERE unit_id NOT IN ({marks}) UNION "
                f"SELECT sop_uid FROM unit_refs WHERE unit_id NOT IN ({marks}) UNION "
                "SELECT sop_uid FROM instances WHERE received_at > ?",
                (*ids, *ids, received_after),
            ).fetchall()
        return {r["uid"] for r in rows}

    def forget_instances(self, sop_uids: Collection[str]) -> int:
        """Delete the rows of objects removed from the spool; returns how many went."""
        with self._transaction() as cur:
            return cur.executemany(
                "DELETE FROM instances WHERE sop_uid = ?", [(u,) for u in sop_uids]
            ).rowcount

    def study_paths(self, study_uid: str) -> list[Path]:
        """Where the study's recorded objects are (``molsub purge``)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT path FROM instances WHERE study_uid = ?", (study_uid,)
            ).fetchall()
        return [self.root / r["path"] for r in rows]

    def study_units(self, study_uid: str) -> list[Unit]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM units WHERE study_uid = ? ORDER BY created_at, unit_id",
                (study_uid,),
            ).fetchall()
            return [self._unit(r) for r in rows]

    def delete_study(self, study_uid: str) -> tuple[int, int]:
        """Delete every row of a study: instances, units and their references (``molsub
        purge``); returns (instances, units) deleted."""
        with self._transaction() as cur:
            cur.execute(
                "DELETE FROM unit_refs WHERE unit_id IN "
                "(SELECT unit_id FROM units WHERE study_uid = ?)",
                (study_uid,),
            )
            units = cur.execute("DELETE FROM units WHERE study_uid = ?", (study_uid,)).rowcount
            instances = cur.execute(
                "DELETE FROM instances WHERE study_uid = ?", (study_uid,)
            ).rowcount
        return instances, units

    def _unit(self, row: sqlite3.Row) -> Unit:
        refs = tuple(json.loads(row["referenced_uids"]))
        paths = {
            r["sop_uid"]: self.root / r["path"]
            for r in self._conn.execute(
                "SELECT i.sop_uid, i.path FROM unit_refs r JOIN instances i USING (sop_uid) "
                "WHERE r.unit_id = ?",
                (row["unit_id"],),
            )
        }
        seg = self._conn.execute(
            "SELECT path FROM instances WHERE sop_uid = ?", (row["seg_uid"],)
        ).fetchone()
        return Unit(
            unit_id=row["unit_id"],
            seg_uid=row["seg_uid"],
            study_uid=row["study_uid"],
            referenced_uids=refs,
            state=UnitState(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_received_at=row["last_received_at"],
            detail=row["detail"],
            times=json.loads(row["times"]),
            seg_path=self.root / seg["path"] if seg else None,
            image_paths=tuple(paths[uid] for uid in refs if uid in paths),
            missing_uids=tuple(uid for uid in refs if uid not in paths),
        )

    def _rel(self, path: Path) -> str:
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.root).as_posix()
        except ValueError:
            return str(resolved)


def format_units(units: list[Unit]) -> str:
    """A plain table of units for the CLI: UIDs, state, when it was received, ready and
    finished (UTC), and why it failed. No patient data."""
    if not units:
        return "no units"

    def stamp(epoch: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) if epoch else "-"

    lines = [
        f"{'UNIT (SEG UID)':<64}  {'STATE':<9}  IMAGES  {'RECEIVED':<19}  {'READY':<19}  "
        f"{'FINISHED':<19}  REASON"
    ]
    for u in units:
        finished = u.times.get(UnitState.DONE) or u.times.get(UnitState.FAILED)
        if u.state is TIMED_OUT:
            finished = u.times.get(TIMED_OUT)
        images = f"{len(u.image_paths)}/{len(u.referenced_uids)}"
        lines.append(
            f"{u.unit_id:<64}  {u.state:<9}  {images:<6}  {stamp(u.received_at):<19}  "
            f"{stamp(u.times.get(READY)):<19}  {stamp(finished):<19}  {u.detail}".rstrip()
        )
    return "\n".join(lines)


def unit_status(spool_dir: str | Path, state: UnitState | None = None) -> list[Unit]:
    """The units of a spool, read without a running node (``molsub`` CLI)."""
    db_path = SpoolLayout.at(spool_dir).state_db
    if not db_path.exists():
        return []
    db = StateDB(db_path)
    try:
        return db.list_units(state)
    finally:
        db.close()
