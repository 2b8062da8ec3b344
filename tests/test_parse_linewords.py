"""The trace scanner's per-line word tests (chunk.LineWords) against plain Python on the bytes.

The column templates read every byte test, mask and number out of 64-byte blocks gathered once
per line; these tests check each of those readers, at every offset a template can ask for
(before the line start, across block edges, near the chunk's end where blocks give way to
single words), on random lines, against ``bytes`` operations on the same buffer.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from s2trace.trace.parse.chunk import BACK, FRONT, Chunk, LineWords, padded

_ALPHABET = "0123456789     \t:-.[]()#abcXYZ"


def _chunk(seed: int, lines: int = 400) -> tuple[Chunk, bytes]:
    rng = random.Random(seed)
    text = "\n".join(
        "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 140))) for _ in range(lines)
    )
    raw = (text + "\n").encode()
    buf = np.zeros(FRONT + len(raw) + 1 + BACK, np.uint8)
    buf[FRONT : FRONT + len(raw)] = np.frombuffer(raw, np.uint8)
    ch = Chunk(padded(buf, len(raw)))
    return ch, ch.buf.tobytes()


def _window(data: bytes, start: int, off: int, width: int) -> bytes:
    return data[start + off : start + off + width]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_words_masks_and_byte_tests_match_the_bytes(seed: int) -> None:
    ch, data = _chunk(seed)
    lw = LineWords(ch, ch.st)
    for off in (-8, -3, 0, 5, 17, 56, 60, 63, 64, 71, 120):
        w = lw.at(off)
        for i, s in enumerate(ch.st):
            assert int(w[i]).to_bytes(8, "little") == _window(data, s, off, 8), (off, i)
        for width in (1, 7, 9, 16):
            digit, space, blank = lw.masks(off, width)
            (only_space,) = lw.masks(off, width, "s")
            assert (only_space == space).all()
            for i, s in enumerate(ch.st):
                seg = _window(data, s, off, width)
                assert int(digit[i]) == sum(1 << j for j, b in enumerate(seg) if 48 <= b <= 57)
                assert int(space[i]) == sum(1 << j for j, b in enumerate(seg) if b == 32)
                assert int(blank[i]) == sum(1 << j for j, b in enumerate(seg) if b <= 32)
    want = [(0, ord("a")), (9, ord(" ")), (63, ord(":")), (64, ord("1"))]
    ok = lw.bytes_are(want)
    for i, s in enumerate(ch.st):
        assert bool(ok[i]) == all(data[s + off] == b for off, b in want)


@pytest.mark.parametrize("seed", [4, 5])
def test_find_numbers_and_blocks_match_the_bytes(seed: int) -> None:
    ch, data = _chunk(seed)
    lw = LineWords(ch, ch.st)
    for off in (0, 3, 58):
        for width in (1, 8, 13, 64):
            found = lw.find(off, width, ord(":"))
            rounds = -(-width // 8)
            for i, s in enumerate(ch.st):
                at = _window(data, s, off, 8 * rounds).find(b":")
                assert found[i] == (at if at >= 0 else 8 * rounds), (off, width, i)
        block = lw.block(off)
        for i, s in enumerate(ch.st):
            got = b"".join(int(block[k][i]).to_bytes(8, "little") for k in range(8))
            assert got == _window(data, s, off, 64)
    for end in (3, 8, 11, 30):
        for length in (1, 5, 8, 12):
            value, ok = lw.decimal(end, length)
            digits = lw.digits(end, np.full(len(ch.st), length))
            for i, s in enumerate(ch.st):
                seg = _window(data, s, end - length, length)
                assert bool(ok[i]) == seg.isdigit(), (end, length, seg)
                if seg.isdigit():
                    assert int(value[i]) == int(seg) == int(digits[i])


def test_lines_near_the_chunk_end_read_single_words() -> None:
    """The last lines' blocks would run past the buffer: their words are gathered one by one,
    with the same values."""
    ch, data = _chunk(6, lines=3)
    last = ch.st[-1:]
    lw = LineWords(ch, last)
    reach = len(ch.buf) - int(last[0]) - 8  # the last word that fits
    for off in (0, 64, reach - reach % 8):
        assert int(lw.at(off)[0]).to_bytes(8, "little") == _window(data, int(last[0]), off, 8)
