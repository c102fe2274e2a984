"""Where ``generate`` writes its images: never over an existing file unless told to.

One image goes to ``--out`` itself (``result.png``). Several images (``--num-images`` per call,
``--batch-count`` calls) go to ``STEM-INDEX-SEED.png``: ``result-1-42.png``, ``result-2-43.png``, ...,
the index counting every image of the command from 1, the seed the one that remakes that image
alone. An existing file is kept: a single image goes to the first free ``STEM-N.png``, and the
indexes of several images continue after the highest one already in the folder (as A1111 numbers
its outputs). ``--overwrite`` replaces files instead.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional


class OutputNames:
    """Names for the images of one command, handed out call by call (seeds are known per call)."""

    def __init__(self, out: str, total: int, overwrite: bool = False):
        stem, ext = os.path.splitext(out)
        self.stem, self.ext = stem, ext or '.png'
        self.total, self.overwrite = total, overwrite
        self.next_index = 1 if overwrite or total == 1 else self._highest_index() + 1
        self.moved: Optional[str] = None  # set when a single image could not take --out's name

    def _highest_index(self) -> int:
        folder = os.path.dirname(self.stem) or '.'
        pattern = re.compile(re.escape(os.path.basename(self.stem)) + r'-(\d+)-\d+' + re.escape(self.ext) + '$')
        try:
            names = os.listdir(folder)
        except OSError:
            return 0
        return max((int(m.group(1)) for m in map(pattern.match, names) if m), default=0)

    def take(self, seeds: List[int]) -> List[str]:
        """The paths of the next images, whose seeds are `seeds`."""
        if self.total == 1:
            return [self._single()]
        paths = [f'{self.stem}-{self.next_index + i}-{seed}{self.ext}' for i, seed in enumerate(seeds)]
        self.next_index += len(seeds)
        return paths

    def _single(self) -> str:
        path = self.stem + self.ext
        if self.overwrite or not os.path.exists(path):
            return path
        n = 1
        while os.path.exists(f'{self.stem}-{n}{self.ext}'):
            n += 1
        self.moved = f'{self.stem}-{n}{self.ext}'
        return self.moved
