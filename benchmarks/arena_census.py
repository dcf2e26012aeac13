"""A census of the live blocks in Python's small-object allocator's arenas, without tracemalloc.

    python benchmarks/arena_census.py            # this interpreter, as a self-check
    (idle_memory.py --census / close_memory.py --census run it in the worker / server)

Why: after a wave of connections closed, pymalloc keeps a 1 MiB arena as long as one block in
it is alive; which blocks those are is what this names. It reads CPython 3.11's allocator state
(Objects/obmalloc.c) through ctypes: the ``arenas`` array (a static symbol of libpython, found
with ``nm``; each ``struct arena_object`` gives the arena's address, ``pool_address`` — the end
of the pools carved so far — and its free pool count), then each pool's ``struct pool_header``
(``ref.count``, ``freeblock``, ``nextpool``, ``prevpool``, ``arenaindex``, ``szidx``,
``nextoffset``, ``maxnextoffset``). A pool's live blocks are those below ``nextoffset`` not on
its ``freeblock`` chain. A block is named by its type when a word where ``ob_type`` sits (after
the GC header and the managed-dict pointers, as the type says) is the address of a live type
object; str/bytes/int/float get a prefix of their value; a dict key table, an array of object
pointers and the rest get a description and a hex prefix. The counts are checked against
``sys._debugmallocstats()``. Read-only, but it calls ``gc.get_objects()`` and builds objects
from addresses: a diagnostic, not for production.
"""

from __future__ import annotations

import array
import bisect
import ctypes
import gc
import os
import re
import struct
import subprocess
import sys
import types as pytypes
from collections import Counter, defaultdict
from typing import Any

ARENA_SIZE = 1 << 20
POOL_SIZE = 1 << 14
ALIGNMENT = 16
POOL_OVERHEAD = 48  # sizeof(struct pool_header), rounded up to ALIGNMENT
NB_SMALL_SIZE_CLASSES = 32
GC_HEAD = 16  # sizeof(PyGC_Head)
HAVE_GC = 1 << 14
MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT (3.11): two pointers before the GC header
# Formats, not Structs: a Struct cannot be pickled (idle_memory.py sends this module to a worker).
ARENA_OBJECT = "=QQIIQQQ"  # address, pool_address, nfreepools, ntotalpools, freepools, next, prev
POOL_HEADER = "=QQQQIIII"  # ref.count (union), freeblock, nextpool, prevpool, arenaindex, szidx, ...


def _read(address: int, size: int) -> bytes:
    return ctypes.string_at(address, size)


def _word(address: int) -> int:
    return int(ctypes.c_uint64.from_address(address).value)


def _symbols() -> tuple[int, int]:
    """Runtime addresses of obmalloc's ``arenas`` and ``maxarenas`` (static symbols)."""
    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= runtime < end and len(fields) > 5:
                path = fields[5]
    if path is None:
        raise RuntimeError("cannot find the file that holds _PyRuntime")
    table = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] in ("arenas", "maxarenas", "_PyRuntime"):
            found[parts[2]] = int(parts[0], 16)
    if len(found) < 3:
        raise RuntimeError(f"{path} has no symbol table for obmalloc's statics (stripped?)")
    base = runtime - found["_PyRuntime"]
    return base + found["arenas"], base + found["maxarenas"]


def arenas() -> array.array:
    """The arenas currently allocated, five numbers each: index, address, the end of the pools
    carved (``pool_address``), free pools, total pools. An array: dicts or tuples of ints would
    sit in the arenas walked."""
    arenas_at, maxarenas_at = _symbols()
    table = _word(arenas_at)
    count = ctypes.c_uint.from_address(maxarenas_at).value
    found = array.array("Q")
    for index in range(count):
        size = struct.calcsize(ARENA_OBJECT)
        address, pool_address, nfree, ntotal, *_ = struct.unpack(ARENA_OBJECT, _read(table + index * size, size))
        if address:
            found.extend((index, address, pool_address, nfree, ntotal))
    return found


class _Types:
    """Every live type, looked up by address: a sorted array of addresses, not a dict keyed by
    ints (the census's own ints, one per type, would sit in the arenas it walks)."""

    def __init__(self) -> None:
        found: dict[int, type] = {}
        todo: list[type] = [object, type]
        todo += [type(o) for o in gc.get_objects()]
        for module in list(sys.modules.values()):
            todo += [v for v in list(getattr(module, "__dict__", {}).values()) if isinstance(v, type)]
        while todo:
            t = todo.pop()
            if id(t) in found:
                continue
            found[id(t)] = t
            try:
                todo += type.__subclasses__(t)
            except TypeError:
                pass
        del todo
        self.addresses = array.array("Q", sorted(found))
        self.types = [found[a] for a in self.addresses]
        found.clear()

    def get(self, address: int) -> type | None:
        i = bisect.bisect_left(self.addresses, address)
        return self.types[i] if i < len(self.addresses) and self.addresses[i] == address else None


class _Memory:
    """Which addresses may be read: the process's readable mappings."""

    def __init__(self) -> None:
        # Arrays, not lists of ints: the census's own ints would sit in the arenas it walks.
        self.starts = array.array("Q")
        self.ends = array.array("Q")
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if fields[1].startswith("r"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    self.starts.append(start)
                    self.ends.append(end)

    def readable(self, address: int, size: int = 16) -> bool:
        i = bisect.bisect_right(self.starts, address) - 1
        return i >= 0 and address + size <= self.ends[i]


def _object_at(block: int, size: int, data: memoryview, types: _Types) -> tuple[int, type, bool] | None:
    """(address of the object, its type, whether its reference count is 0) if a Python object
    starts in this block. A count of 0: a dead object kept on its type's free list (list, tuple,
    dict, ...), which holds its block as a live one would."""
    for offset, gc_type, managed in ((0, False, False), (GC_HEAD, True, False), (GC_HEAD + 16, True, True)):
        if offset + 16 > size:
            break
        refcnt, tp_address = struct.unpack_from("=qQ", data, offset)
        t = types.get(tp_address)
        if t is None or not 0 <= refcnt < 1 << 40:
            continue
        flags = t.__flags__
        if bool(flags & HAVE_GC) != gc_type or bool(flags & MANAGED_DICT) != managed:
            continue
        if offset + (48 if t is str else t.__basicsize__) > size:  # str's basicsize is the non-compact form's
            continue
        return block + offset, t, refcnt == 0
    return None


def _label(t: type, data: memoryview, offset: int, memory: _Memory, types: _Types) -> str:
    """The type's name and, for str/bytes/int/float/tuple, a prefix of the value, read from the
    block's bytes (no Python object is made from an address: a stale type word in a buffer would
    otherwise be increfed and freed)."""
    name = t.__qualname__ if t.__module__ in ("builtins", None) else f"{t.__module__}.{t.__qualname__}"
    size = len(data)
    if t is str and offset + 48 <= size:
        length, state = struct.unpack_from("=q8xI", data, offset + 16)
        kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if compact and ascii_:
            text = bytes(data[offset + 48 : min(size, offset + 48 + min(length, 40))]).decode("ascii", "replace")
            return f"str {text!r}" + ("…" if length > 40 else "")
        return f"str (kind {kind}, length {length})"
    if t is bytes and offset + 33 <= size:
        length = struct.unpack_from("=q", data, offset + 16)[0]
        return f"bytes {bytes(data[offset + 32 : min(size, offset + 32 + min(length, 24))])!r}"
    if t is float and offset + 24 <= size:
        return f"float {struct.unpack_from('=d', data, offset + 16)[0]!r}"
    if t in (int, bool) and offset + 28 <= size:
        ndigits = struct.unpack_from("=q", data, offset + 16)[0]
        if abs(ndigits) <= 2 and offset + 24 + 4 * abs(ndigits) <= size:
            digits = struct.unpack_from(f"={abs(ndigits)}I", data, offset + 24)
            value = sum(d << (30 * i) for i, d in enumerate(digits))
            return f"int {-value if ndigits < 0 else value}"
        return f"int ({abs(ndigits)} digits)"
    if t is tuple and offset + 24 <= size:
        length = struct.unpack_from("=q", data, offset + 16)[0]
        names = []
        for i in range(min(max(length, 0), 4, (size - offset - 24) // 8)):
            item = struct.unpack_from("=Q", data, offset + 24 + 8 * i)[0]
            item_type = types.get(_word(item + 8)) if item and memory.readable(item + 8, 8) else None
            names.append(item_type.__name__ if item_type else "?")
        return f"tuple({', '.join(names)}{', …' if length > 4 else ''})"
    return name


def _raw_label(block: int, size: int, data: memoryview, types: _Types, memory: _Memory) -> str:
    """A block that is not an object: a dict key table, an array of object pointers, or bytes."""
    words = struct.unpack_from(f"={min(size, 64) // 8}Q", data, 0)
    # PyDictKeysObject: dk_refcnt, then dk_log2_size, dk_log2_index_bytes, dk_kind (bytes).
    log2_size, log2_index, kind = data[8], data[9], data[10]
    if 0 < words[0] < 1 << 20 and 3 <= log2_size <= 16 and log2_size <= log2_index <= log2_size + 3 and kind < 3:
        entries = 32 + (1 << log2_index)
        key = None
        if entries + 16 <= size:
            step = 16 if kind else 24
            first = entries + (0 if kind else 8)
            for at in range(first, min(size, first + step * 8) - 8, step):
                pointer = struct.unpack_from("=Q", data, at)[0]
                if pointer and memory.readable(pointer) and types.get(_word(pointer + 8)) is str:
                    key = ctypes.cast(pointer, ctypes.py_object).value
                    break
        return f"dict keys ({'unicode' if kind else 'general'}{', split' if kind == 2 else ''}, key {key!r:.32})"
    pointed = Counter()
    for w in words:
        if w and w % 8 == 0 and memory.readable(w + 8, 8):
            t = types.get(_word(w + 8))
            if t is not None:
                pointed[t.__qualname__] += 1
    if pointed:
        return "pointers to " + "/".join(k for k, _ in pointed.most_common(2))
    return f"raw {bytes(data[:16]).hex()}"


def census(mostly_free: float = 0.5, only_new: set[int] | None = None, referrers: int = 0) -> dict[str, Any]:
    """Walk every arena and pool. For arenas with at least ``mostly_free`` of their pools free
    (and, given ``only_new``, whose address is not in it), name each live block. Returns counts
    checked against ``sys._debugmallocstats``, the arena addresses, and per named arena the
    labels of its live blocks; with ``referrers``, the types of the referrers of up to that many
    objects per label."""
    gc.collect()
    types = _Types()
    memory = _Memory()
    table = arenas()
    stats = debugmallocstats()
    # A copy of every arena first (malloc'd, as each is over 512 bytes), then the walk over the
    # copies: the walk's own objects would otherwise land in pools not yet walked.
    images: list[Any] = [None] * (len(table) // 5)
    for i in range(len(images)):
        images[i] = _read(table[5 * i + 1], ARENA_SIZE)
    found = [
        {
            "index": table[i],
            "address": table[i + 1],
            "pool_address": table[i + 2],
            "free": table[i + 3],
            "total": table[i + 4],
        }
        for i in range(0, len(table), 5)
    ]
    used_blocks = Counter()
    used_pools = Counter()
    pinned: list[dict[str, Any]] = []
    labels_total: Counter = Counter()
    holders: dict[str, Counter] = defaultdict(Counter)
    sample_objects: dict[str, list[Any]] = defaultdict(list)
    storage_blocks = array.array("Q")
    storage_labels: list[str] = []
    for arena, image in zip(found, images):
        base = arena["address"]
        first_pool = (arena["address"] + POOL_SIZE - 1) & ~(POOL_SIZE - 1)
        detail = arena["free"] >= mostly_free * arena["total"] and (
            only_new is None or arena["address"] not in only_new
        )
        labels: Counter = Counter()
        pools_live = 0
        for pool in range(first_pool, arena["pool_address"], POOL_SIZE):
            count, freeblock, _, _, arenaindex, szidx, nextoffset, _ = struct.unpack_from(
                POOL_HEADER, image, pool - base
            )
            count &= 0xFFFFFFFF
            if count == 0:
                continue
            if arenaindex != arena["index"] or szidx >= NB_SMALL_SIZE_CLASSES:
                raise RuntimeError(f"pool {pool:#x} does not look like a pool of arena {arena['index']}")
            pools_live += 1
            size = (szidx + 1) * ALIGNMENT
            used_blocks[size] += count
            used_pools[size] += 1
            if not detail:
                continue
            data = memoryview(image)[pool - base : pool - base + POOL_SIZE]
            free = set()
            block = freeblock
            while block and pool <= block < pool + POOL_SIZE and block not in free:
                free.add(block)
                block = struct.unpack_from("=Q", data, block - pool)[0]
            for offset in range(POOL_OVERHEAD, nextoffset, size):
                block = pool + offset
                if block in free:
                    continue
                view = data[offset : offset + size]
                obj = _object_at(block, size, view, types)
                if obj is not None:
                    if obj[2]:
                        label = f"(on a free list) {obj[1].__qualname__}"
                    else:
                        label = _label(obj[1], view, obj[0] - block, memory, types)
                    if obj[1].__flags__ & HAVE_GC and not obj[2] and len(sample_objects[label]) < referrers:
                        sample_objects[label].append(obj[0])  # an address: found among gc's objects below
                else:
                    label = f"[{size}] " + _raw_label(block, size, view, types, memory)
                    if referrers and len(storage_blocks) < 4096:
                        storage_blocks.append(block)  # a dict's key table, a list's or set's storage?
                        storage_labels.append(label)
                labels[label] += 1
        if detail:
            pinned.append(
                {
                    "index": arena["index"],
                    "address": arena["address"],
                    "pools_live": pools_live,
                    "pools_free": arena["free"],
                    "blocks": sum(labels.values()),
                    "labels": labels.most_common(12),
                }
            )
            labels_total.update(labels)
    del images
    if referrers:
        wanted = {address: label for label, addresses in sample_objects.items() for address in addresses}
        objects = [o for o in gc.get_objects() if id(o) in wanted]
        for obj in objects:
            for ref in gc.get_referrers(obj):
                if ref is objects or isinstance(ref, type(sys._getframe())):
                    continue
                holders[wanted[id(obj)]][_holder(ref)] += 1
        del objects
        _storage_owners(storage_blocks, storage_labels, holders)
    sample_objects.clear()
    return {
        "arenas": len(found),
        "arena_addresses": sorted(a["address"] for a in found),
        "free_pools": sum(a["free"] for a in found),
        "blocks": sum(used_blocks.values()),
        "check": {
            "arenas (debugmallocstats)": stats["arenas"],
            "blocks in use (debugmallocstats)": stats["blocks"],
            "blocks in use (walked)": sum(used_blocks.values()),
            "blocks in use after the walk (debugmallocstats)": debugmallocstats()["blocks"],
            "unused pools (debugmallocstats)": stats["free_pools"],
            "free pools (walked)": sum(a["free"] for a in found),
        },
        "pinned": pinned,
        "labels": labels_total.most_common(60),
        "holders": {k: v.most_common(4) for k, v in holders.items()},
    }


#: Where a container keeps the address of its storage (CPython 3.11): a dict's ``ma_keys``, a
#: list's ``ob_item``, a set's ``table``.
STORAGE_POINTER = ((dict, 32), (list, 24), (set, 40), (frozenset, 40))


def _storage_owners(blocks: array.array, labels: list[str], holders: dict[str, Counter]) -> None:
    """The containers whose storage (a dict's key table, a list's or set's items) is one of
    ``blocks``: not objects, so no referrer names them. Untracked dicts (of atomic values only)
    are found among the referents of tracked objects."""
    if not blocks:
        return
    wanted = dict(zip(blocks, labels))
    seen: set[int] = set()
    for obj in gc.get_objects():
        candidates = (obj, *gc.get_referents(obj))
        for candidate in candidates:
            if id(candidate) in seen:
                continue
            seen.add(id(candidate))
            for kind, offset in STORAGE_POINTER:
                if isinstance(candidate, kind):
                    label = wanted.get(_word(id(candidate) + offset))
                    if label is not None:
                        owners = "; ".join(_holder(r) for r in gc.get_referrers(candidate)[:4] if r is not candidates)
                        holders[label][f"storage of {_holder(candidate)} <- {owners or _holder(obj)}"] += 1
                    break


def _holder(ref: Any) -> str:
    frame = (
        ref.cr_frame
        if isinstance(ref, pytypes.CoroutineType)
        else ref.gi_frame
        if isinstance(ref, pytypes.GeneratorType)
        else None
    )
    if frame is not None:
        where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        return f"{type(ref).__name__} {frame.f_code.co_qualname} ({where})"
    if isinstance(ref, dict):
        for value in gc.get_referrers(ref)[:8]:
            if getattr(value, "__dict__", None) is ref:
                return f"__dict__ of {type(value).__module__}.{type(value).__qualname__}"
            if getattr(value, "__name__", None) and getattr(value, "__dict__", None) is ref:
                return f"module {value.__name__}"
        keys = list(ref)[:3]
        return f"dict (keys {keys!r:.60})"
    return f"{type(ref).__module__}.{type(ref).__qualname__}"


def mallocstats_text() -> str:
    """What ``sys._debugmallocstats()`` prints (to the C stderr), as text."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write_end, 2)  # _debugmallocstats writes to the C stderr
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    text = os.read(read_end, 1 << 20).decode()
    os.close(read_end)
    return text


def debugmallocstats() -> dict[str, int]:
    text = mallocstats_text()
    blocks = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0].isdigit():
            blocks += int(fields[3])
        elif line.startswith("Small block threshold"):
            blocks = 0
        elif line.startswith("# arenas"):
            break

    def number(pattern: str) -> int:
        match = re.search(pattern, text)
        return int(match.group(1).replace(",", "")) if match else -1

    return {
        "arenas": number(r"# arenas allocated current\s+=\s+([\d,]+)"),
        "blocks": blocks,
        "free_pools": number(r"([\d,]+) unused pools \*"),
    }


def format_census(result: dict[str, Any], title: str, arenas_shown: int = 40) -> str:
    lines = [
        f"{title}: {result['arenas']} arenas, {result['free_pools']} free pools, {result['blocks']} live blocks",
        "  check: " + ", ".join(f"{k} {v}" for k, v in result["check"].items()),
    ]
    pinned = result["pinned"]
    if pinned:
        blocks = sum(p["blocks"] for p in pinned)
        lines.append(
            f"  {len(pinned)} mostly free arenas ({sum(p['pools_free'] for p in pinned)} free pools) held by "
            f"{blocks} live blocks in {sum(p['pools_live'] for p in pinned)} pools; their blocks by kind:"
        )
        lines += [f"    {count:6d}  {label}" for label, count in result["labels"]]
        lines.append("  per arena (index: live pools/free pools, blocks: top kinds):")
        for p in sorted(pinned, key=lambda p: p["blocks"])[:arenas_shown]:
            kinds = "; ".join(f"{c} {label}" for label, c in p["labels"][:6])
            lines.append(f"    {p['index']}: {p['pools_live']}/{p['pools_free']}, {p['blocks']}: {kinds}")
    for label, refs in result["holders"].items():
        lines.append(f"  held: {label[:60]} <- " + ", ".join(f"{r} ({c})" for r, c in refs))
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_census(census(mostly_free=0.0, referrers=1), "this interpreter"))
