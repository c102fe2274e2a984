"""DIR/manifest.jsonl: what a batch made (id, files, seed, parameters, time) or why not, per item.

Lines are appended whole and fsynced, so a killed run loses only the items in flight; a complete run
rewrites the file atomically with exactly one record per item, in the order of the input file.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, Optional, Sequence

from .batch_items import Item
from .errors import BatchError
from .files import atomic_write

MANIFEST = 'manifest.jsonl'


def now() -> str:
    """A record's time stamp: UTC, ISO 8601, milliseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def _json_line(record: Dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, allow_nan=False) + '\n').encode('utf-8')


class Manifest:
    """DIR/manifest.jsonl: one JSON record per line; the latest record of an id is the one that counts."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, MANIFEST)
        self.records: Dict[str, Dict[str, Any]] = {}
        self._fd: Optional[int] = None

    def load(self) -> None:
        """Read the records, dropping a last line torn by a killed run."""
        self.records = {}
        if not os.path.exists(self.path):
            return
        with open(self.path, 'rb') as f:
            lines = f.read().split(b'\n')
        # The text after the last newline is a torn write (or empty); so is an unreadable last line.
        lines = [line for line in lines[:-1] if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line.decode('utf-8'))
                if not isinstance(record, dict) or not isinstance(record.get('id'), str):
                    raise ValueError('not a record with an id')
            except ValueError as exc:
                if number == len(lines):
                    break
                raise BatchError(f'{self.path} line {number} is not a manifest record ({exc}); '
                                 'fix or remove that line') from exc
            self.records.pop(record['id'], None)
            self.records[record['id']] = record

    def files_present(self, record: Dict[str, Any]) -> bool:
        files = record.get('files')
        return bool(files) and all(
            isinstance(f, str) and os.path.isfile(os.path.join(self.out_dir, f))
            and os.path.getsize(os.path.join(self.out_dir, f)) > 0 for f in files)

    def is_done(self, item: Item, retry_invalid: bool = False) -> bool:
        """Whether the item's record stands for this line as it is now: made, with its files on disk,
        or refused as invalid (the same line is refused the same way again)."""
        record = self.records.get(item.id)
        if record is None or record.get('input') != item.input or record.get('raw') != item.raw:
            return False
        if record.get('status') == 'ok':
            return self.files_present(record)
        return record.get('status') == 'invalid' and not retry_invalid

    def rewrite(self, items: Sequence[Item]) -> None:
        """Atomically replace the file with one record per id: the input's items in file order, then
        records of ids no longer in the input whose images are still in the folder."""
        self.close()
        current = {item.id for item in items}
        ordered = [self.records[item.id] for item in items if item.id in self.records]
        ordered += [r for i, r in self.records.items()
                    if i not in current and r.get('status') == 'ok' and self.files_present(r)]
        self.records = {r['id']: r for r in ordered}
        atomic_write(self.path, lambda f: f.writelines(_json_line(r) for r in ordered))

    def append(self, record: Dict[str, Any]) -> None:
        """Append one whole line and make it durable before going on."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        data = _json_line(record)
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)
        self.records.pop(record['id'], None)
        self.records[record['id']] = record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
