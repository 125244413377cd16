"""The ring layer alone, on the real kernel: setup and teardown of every
backing, what the process's memory map shows, SQ full, CQ overflow, waits,
probing, bad input, closed rings, threads, fork and provided buffers.

Every wait is bounded (``_reap`` gives up after a deadline) and pytest-timeout
backs that up, so a ring that stops completing fails the test instead of
hanging CI. Timing assertions only use generous bounds.
"""

import errno
import os
import socket
import threading
import time

import pytest

from aiouring import ring as ringmod
from aiouring.errors import RingClosedError
from aiouring.ring import Ring, check

pytestmark = pytest.mark.timeout(60)

# Opcodes by name, from the ring layer's own table (no numbers written here).
OP = {name: code for code, name in ringmod.OPCODE_NAMES.items()}
# SQE/CQE flag constants, as the ring layer exports them.
_lib = ringmod.uapi

PAGE = os.sysconf("SC_PAGESIZE")
HUGE_2MB = 2 * 1024 * 1024
NO_MMAP_BACKINGS = ("hugetlb", "thp", "pages")


def _kernel_version():
    parts = []
    for piece in os.uname().release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


KERNEL = _kernel_version()


def _min_kernel_for(backing):
    # NO_MMAP is 6.5; until 6.10 the region had to be physically contiguous,
    # which only a single page or a huge page guarantees.
    return {"hugetlb": (6, 5), "thp": (6, 5), "pages": (6, 10), "kernel": (5, 4)}[backing]


def _page_align(n):
    return (n + PAGE - 1) // PAGE * PAGE


def _pow2(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def nop(ring, ud, sqe_flags=0):
    ring.prep(OP["NOP"], -1, ring.null, 0, 0, 0, ud, sqe_flags)


def _reap(ring, count, timeout=10.0):
    """Submit and collect completions until ``count`` have arrived, as
    ``(user_data, res, flags)`` triples. Fails rather than waits forever."""
    deadline = time.monotonic() + timeout
    got = []
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(got)} of {count} completions arrived within {timeout}s")
        flat = ring.submit_and_reap(min(left, 0.5))
        got.extend(zip(flat[0::3], flat[1::3], flat[2::3]))
    return got


def _roundtrip(ring, ud=4242):
    nop(ring, ud)
    (cqe,) = _reap(ring, 1)
    assert cqe == (ud, 0, 0)


class _Mapping:
    def __init__(self, header):
        fields = header.split(None, 5)
        start, end = fields[0].split("-")
        self.start, self.end = int(start, 16), int(end, 16)
        self.perms = fields[1]
        self.offset = int(fields[2], 16)
        self.inode = int(fields[4])
        self.path = fields[5].strip() if len(fields) > 5 else ""
        self.kb = {}
        self.vmflags = set()


def _smaps():
    """Every mapping of this process with its smaps fields."""
    maps = []
    with open("/proc/self/smaps") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if "-" in line.split(" ", 1)[0] and not key.isidentifier():
                maps.append(_Mapping(line))
            elif key == "VmFlags":
                maps[-1].vmflags = set(rest.split())
            elif rest.strip().endswith("kB"):
                maps[-1].kb[key] = int(rest.split()[0])
    return maps


def _mapping_at(address):
    for m in _smaps():
        if m.start <= address < m.end:
            return m
    return None


def _ring_fd_mappings(ring_fd_inode):
    """Mappings of a particular ring's file (each ring has its own inode)."""
    return [m for m in _smaps() if m.inode == ring_fd_inode and "io_uring" in m.path]


def _make(backing, sq=8, cq=None):
    if KERNEL < _min_kernel_for(backing):
        pytest.skip(f"{backing} backing needs Linux {'.'.join(map(str, _min_kernel_for(backing)))}")
    return Ring(sq, cq, backing=backing)


@pytest.fixture
def ring():
    r = Ring(8)
    yield r
    r.close()


# ---- setup and teardown of each backing -----------------------------------

def _check_backing_lifecycle(backing):
    r = _make(backing)
    try:
        info = r.info()
        assert info.backing == backing
        assert info.fallbacks == ()     # strict: nothing else was tried
        ino = os.fstat(r.fd).st_ino
        addr = r.memory_address()
        _roundtrip(r)
        if backing == "kernel":
            assert addr == 0
            mapped = _ring_fd_mappings(ino)
            # With FEAT_SINGLE_MMAP the SQ and CQ rings share one mapping at
            # offset 0; the SQE array is a second one at IORING_OFF_SQES.
            assert {m.offset for m in mapped} == {0, 0x10000000}, mapped
            assert all("dc" in m.vmflags for m in mapped), "ring mappings must be MADV_DONTFORK"
        else:
            assert "NO_MMAP" in info.setup_flags
            assert _ring_fd_mappings(ino) == [], "a NO_MMAP ring must have no mapping of its fd"
            m = _mapping_at(addr)
            assert m is not None and m.start == addr
            assert m.end - m.start == info.memory_bytes
            assert info.rings_bytes + info.sqes_bytes <= info.memory_bytes
            assert "dc" in m.vmflags, "ring memory must be MADV_DONTFORK"
    finally:
        r.close()
    assert r.closed and r.fd == -1
    # Our view of the memory is gone and so is the fd (by identity: the
    # number itself may be reused).
    if backing != "kernel":
        assert _mapping_at(addr) is None
    assert _ring_fd_mappings(ino) == []
    try:
        still = os.fstat(info.ring_fd).st_ino == ino
    except OSError as exc:
        assert exc.errno == errno.EBADF
        still = False
    assert not still, "the ring fd outlived close()"


@pytest.mark.parametrize("backing", ["thp", "pages", "kernel"])
def test_backing_setup_and_teardown(backing):
    _check_backing_lifecycle(backing)


def test_hugetlb_backing_setup_and_teardown(reserved_huge_pages):
    _check_backing_lifecycle("hugetlb")


def test_hugetlb_mapping_is_one_2mb_page_holding_both_regions(reserved_huge_pages):
    # Reserved pages mean the default order picks hugetlb without being told.
    with Ring() as r:
        info = r.info()
        assert info.backing == "hugetlb", info.fallbacks
        m = _mapping_at(r.memory_address())
        assert m.kb["KernelPageSize"] == 2048
        assert "ht" in m.vmflags
        # The default ring (SQ 4096 / CQ 16384) is about half a MiB: rings and
        # SQEs share a single huge page.
        assert m.end - m.start == HUGE_2MB
        assert m.kb.get("Private_Hugetlb", 0) + m.kb.get("Shared_Hugetlb", 0) == 2048
        assert _ring_fd_mappings(os.fstat(r.fd).st_ino) == []
        _roundtrip(r)


def test_hugetlb_without_reserved_pages_falls_back_and_says_why():
    status = ringmod.huge_page_status()
    if status["hugetlb_2mb_free"] != 0:
        pytest.skip("2 MiB huge pages are reserved on this machine")
    if KERNEL < (6, 5):
        pytest.skip("no NO_MMAP")
    with Ring(8) as r:
        info = r.info()
        assert info.backing != "hugetlb"
        assert info.fallbacks[0][0] == "hugetlb"
        assert info.fallbacks[0][1].startswith("ENOMEM")
    with pytest.raises(OSError) as exc_info:
        Ring(8, backing="hugetlb")
    assert exc_info.value.errno == errno.ENOMEM


def test_thp_mapping_is_aligned_advised_and_huge_when_granted():
    with _make("thp") as r:
        m = _mapping_at(r.memory_address())
        assert m.start % HUGE_2MB == 0 and (m.end - m.start) % HUGE_2MB == 0
        assert "hg" in m.vmflags    # MADV_HUGEPAGE took effect
        mode = ringmod.huge_page_status()["thp_mode"]
        if mode == "never":
            pytest.skip("THP is disabled on this machine")
        if m.kb.get("AnonHugePages", 0) == 0:
            # The kernel may have no free contiguous 2 MiB block; that is
            # the machine's state, and `python -m aiouring` reports it.
            pytest.skip("the kernel did not back the region with a huge page (fragmentation?)")
        assert m.kb["AnonHugePages"] == 2048


def test_no_huge_pages_option_skips_hugetlb_and_thp(reserved_huge_pages):
    with Ring(8, huge_pages=False) as r:
        assert r.info().backing in ("pages", "kernel")
        assert r.info().fallbacks == () or all(b == "pages" for b, _ in r.info().fallbacks)


# ---- ring sizes: the layout arithmetic against the kernel's own -------------

SIZES = [(1, None), (2, None), (3, None), (100, None), (4096, None), (32768, None),
         (1, 1), (2, 65536), (8, 9), (100, 100), (4096, 16384), (4096, 65536)]


@pytest.mark.parametrize("sq,cq", SIZES)
def test_ring_sizes_match_the_kernel(sq, cq):
    r = Ring(sq, cq, huge_pages=False)
    try:
        info = r.info()
        want_sq = _pow2(sq)
        want_cq = _pow2(cq) if cq is not None else info.cq_entries
        assert info.sq_entries == want_sq
        assert info.cq_entries == want_cq and want_cq >= want_sq
        # A kernel-allocated ring of the same shape tells us, through the
        # offsets the kernel returns, how large the kernel thinks the rings
        # region is; ours must be exactly that, page aligned. A region that
        # is too small would let the kernel pin and write past it.
        with Ring(sq, info.cq_entries, backing="kernel") as k:
            kinfo = k.info()
            assert set(kinfo.setup_flags) == set(info.setup_flags) - {"NO_MMAP"}
            if info.backing != "kernel":
                assert info.rings_bytes == _page_align(kinfo.rings_bytes)
                assert info.sqes_bytes == _page_align(kinfo.sqes_bytes)
            assert kinfo.sqes_bytes == 64 * want_sq
        # Fill the CQ to the brim twice (the second time wraps every index):
        # every completion must come back intact and exactly once, and none
        # may have needed the overflow list.
        n = info.cq_entries
        for rnd in range(2):
            base = rnd * n
            for i in range(n):
                nop(r, base + i + 1)
            r.submit()
            got = _reap(r, n)
            assert sorted(ud for ud, _, _ in got) == list(range(base + 1, base + n + 1))
            assert {res for _, res, _ in got} == {0}
        assert r.statistics().overflow_flushes == 0
    finally:
        r.close()


def test_default_sizes():
    with Ring() as r:
        assert (r.info().sq_entries, r.info().cq_entries) == (
            ringmod.default_sq_entries, ringmod.default_cq_entries)


# ---- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("args,exc", [
    ((0,), ValueError),
    ((-1,), ValueError),
    ((32769,), ValueError),
    ((1 << 40,), ValueError),
    ((8, 0), ValueError),
    ((8, -4), ValueError),
    ((8, 65537), ValueError),
    ((8, 4), ValueError),          # cq < sq
    ((8.0,), TypeError),
    (("8",), TypeError),
    ((True,), TypeError),
    ((8, 16.0), TypeError),
    ((None,), TypeError),
])
def test_bad_sizes_are_refused(args, exc):
    with pytest.raises(exc):
        Ring(*args)


def test_bad_backing_is_refused():
    with pytest.raises(ValueError):
        Ring(8, backing="swap")


# ---- submission and completion ---------------------------------------------

def test_a_million_nops_through_an_8_entry_ring():
    n = 1_000_000
    batch = 1024          # several SQ-fulls per batch; prep must flush them
    seen = bytearray(n)
    with Ring(8) as r:
        assert r.info().sq_entries == 8
        ud = 0
        while ud < n:
            end = min(ud + batch, n)
            for i in range(ud, end):
                nop(r, i)
            got = r.submit_and_reap(0)
            # Whatever is still outstanding arrives on later reaps.
            total = len(got) // 3
            while total < end - ud:
                more = _reap(r, 1)
                got.extend(x for cqe in more for x in cqe)
                total = len(got) // 3
            assert set(got[1::3]) == {0}
            for u in got[0::3]:
                seen[u] += 1
            ud = end
        stats = r.statistics()
    assert seen.count(1) == n, "every user_data exactly once"
    assert stats.sqes_submitted == n and stats.cqes_reaped == n
    # Each batch of k preps overflows the 8-entry SQ ceil(k/8) - 1 times.
    assert stats.sq_full_flushes == sum(-(-min(batch, n - b) // 8) - 1 for b in range(0, n, batch))


def test_explicit_submit_is_not_counted_as_an_sq_full_flush(ring):
    nop(ring, 1)
    ring.submit()
    _reap(ring, 1)
    assert ring.statistics().sq_full_flushes == 0
    for i in range(9):          # one more than fits: exactly one flush
        nop(ring, 10 + i)
    assert ring.statistics().sq_full_flushes == 1
    _reap(ring, 9)


def test_cq_overflow_loses_nothing():
    with Ring(2, 4) as r:
        if "NODROP" not in r.info().features:
            pytest.skip("kernel without FEAT_NODROP drops overflowed CQEs")
        n = 500
        for i in range(n):          # SQ of 2: prep flushes 250 times; CQ of 4 overflows
            nop(r, i)
        r.submit()
        assert r.statistics().cq_ready == 4
        got = _reap(r, n)
        stats = r.statistics()
    assert sorted(ud for ud, _, _ in got) == list(range(n))
    assert stats.overflow_flushes > 0
    assert stats.cqes_reaped == n


def test_user_data_round_trips_at_the_edges_of_its_range(ring):
    # Whatever prep accepts as user_data must come back unchanged: a key that
    # came back different would find the wrong op record, or none.
    for ud in (0, 1, 2**31, 2**32 + 5, 2**63 - 1, 2**63, 2**64 - 1, -1):
        try:
            nop(ring, ud)
        except OverflowError:
            continue
        (cqe,) = _reap(ring, 1)
        assert cqe[0] == ud
    # Cancelling must find an op by the same key its CQE carries.
    ring.prep_timeout(30, -5)
    ring.submit()
    ring.prep_cancel(-5, 6)
    assert dict((ud, res) for ud, res, _ in _reap(ring, 2)) == {-5: -errno.ECANCELED, 6: 0}


def test_wait_with_nothing_queued_times_out(ring):
    assert ring.submit_and_reap(0) == []
    t0 = time.monotonic()
    assert ring.submit_and_reap(0.05) == []
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 5.0


def test_wait_returns_early_when_a_completion_is_ready(ring):
    nop(ring, 7)
    t0 = time.monotonic()
    assert ring.submit_and_reap(30) == [7, 0, 0]
    assert time.monotonic() - t0 < 5.0


def test_timeout_op_completes_with_etime(ring):
    if not ring.supports(OP["TIMEOUT"]):
        pytest.skip("no IORING_OP_TIMEOUT")
    t0 = time.monotonic()
    ring.prep_timeout(0.05, 99)
    (cqe,) = _reap(ring, 1)
    elapsed = time.monotonic() - t0
    assert cqe[:2] == (99, -errno.ETIME)
    assert 0.04 <= elapsed < 5.0


def test_timeout_ops_keep_their_own_durations(ring):
    # Each TIMEOUT SQE points at its own timespec: queueing several before
    # one submit must not make them share a duration.
    ring.prep_timeout(0.3, 2)
    ring.prep_timeout(0.01, 1)
    got = _reap(ring, 2)
    assert [ud for ud, _, _ in got] == [1, 2]


def test_cancel_a_pending_timeout(ring):
    ring.prep_timeout(30, 5)
    ring.submit()
    ring.prep_cancel(5, 6)
    got = dict((ud, res) for ud, res, _ in _reap(ring, 2))
    assert got == {5: -errno.ECANCELED, 6: 0}


def test_probe_knows_the_basics(ring):
    ops = ring.probe()
    if not ops:
        pytest.skip("kernel without IORING_REGISTER_PROBE (5.6)")
    for name in ("NOP", "READ", "RECV"):
        assert OP[name] in ops, name
        assert ring.supports(OP[name])
    ring.require(OP["NOP"])
    assert ring.probe() is ops     # asked once
    assert 255 not in ops
    with pytest.raises(NotImplementedError):
        ring.require(255)


# ---- errors from the kernel ------------------------------------------------

def _read_fd(ring, fd, ud):
    buf = bytearray(16)
    ptr = ring.pointer(buf, writable=True)
    ring.prep(OP["READ"], fd, ptr, len(buf), 0, 0, ud)
    (cqe,) = _reap(ring, 1)
    del ptr
    return cqe


def test_sqe_on_a_closed_fd_completes_with_ebadf(ring):
    rfd, wfd = os.pipe()
    os.close(rfd)
    os.close(wfd)
    ud, res, _ = _read_fd(ring, rfd, 11)
    assert (ud, res) == (11, -errno.EBADF)
    with pytest.raises(OSError) as exc_info:
        check(res)
    assert exc_info.value.errno == errno.EBADF


def test_sqe_on_an_fd_that_was_never_ours_completes_with_ebadf(ring):
    # Beyond any fd table: nothing this process could have opened.
    ud, res, _ = _read_fd(ring, 2**30, 12)
    assert res == -errno.EBADF
    with pytest.raises(OSError) as exc_info:
        check(res)
    assert exc_info.value.errno == errno.EBADF
    assert check(5) == 5 and check(0) == 0


def test_a_good_read_still_works(ring):
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, b"hello")
        buf = bytearray(16)
        ptr = ring.pointer(buf, writable=True)
        ring.prep(OP["READ"], rfd, ptr, len(buf), 0, 0, 1)
        (cqe,) = _reap(ring, 1)
        assert cqe[1] == 5 and bytes(buf[:5]) == b"hello"
    finally:
        os.close(rfd)
        os.close(wfd)


# ---- closed rings ----------------------------------------------------------

@pytest.mark.parametrize("enabled", [False, True])
def test_calls_on_a_closed_ring_raise_ring_closed(enabled):
    r = Ring(8)
    if enabled:
        _roundtrip(r)
    r.close()
    r.close()   # idempotent
    calls = [
        lambda: nop(r, 1),
        lambda: r.prep2(OP["NOP"], -1, r.null, 0, r.null, 0, 1),
        lambda: r.prep_timeout(1, 1),
        lambda: r.prep_cancel(1, 2),
        lambda: r.prep_cancel_fd(0, 2),
        lambda: r.prep_poll_remove(1, 2),
        lambda: r.submit(),
        lambda: r.submit_and_reap(0),
        lambda: r.submit_and_reap(0.01),
        lambda: r.submit_and_reap(None),
        lambda: r.buffer_ring(1, 4, 64),
    ]
    if not enabled:
        calls.append(lambda: r.probe())
    for call in calls:
        with pytest.raises(RingClosedError):
            call()
    assert r.pending() == 0
    assert "closed" in repr(r)
    assert r.statistics().sq_pending == 0


# ---- threads ---------------------------------------------------------------

def _in_thread(fn):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as exc:   # reported to the test thread
            box["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(20)
    assert not t.is_alive(), "thread hung on the ring"
    return box


def _need_single_issuer(r):
    if "SINGLE_ISSUER" not in r.info().setup_flags:
        pytest.skip("kernel without IORING_SETUP_SINGLE_ISSUER (6.0)")


def test_another_thread_cannot_drive_an_enabled_ring(ring):
    _need_single_issuer(ring)
    _roundtrip(ring)          # this thread enabled the ring and owns it
    assert ring.owner_thread == threading.get_ident()
    nop(ring, 77)
    for call in (lambda: ring.submit_and_reap(0), ring.submit, lambda: ring.submit_and_reap(0.01)):
        box = _in_thread(call)
        assert isinstance(box.get("error"), RuntimeError), box
        assert not isinstance(box["error"], RingClosedError)
    # The owner carries on, and the SQE queued before is not lost.
    assert _reap(ring, 1) == [(77, 0, 0)]
    _roundtrip(ring)


def test_the_first_thread_to_use_a_ring_owns_it():
    _ring = Ring(8)
    try:
        _need_single_issuer(_ring)
        box = _in_thread(lambda: (_roundtrip(_ring), threading.get_ident())[1])
        assert "error" not in box, box
        assert _ring.owner_thread == box["result"]
        nop(_ring, 1)
        with pytest.raises(RuntimeError):
            _ring.submit_and_reap(0)
    finally:
        _ring.close()


# ---- fork ------------------------------------------------------------------

def _child_checks(parent_ring, parent_fd, parent_ino):
    """Runs in the forked child; returns an exit code naming the first
    failed check (0: all good)."""
    if not parent_ring.closed:
        return 10
    for code, call in ((11, lambda: nop(parent_ring, 1)),
                       (12, lambda: parent_ring.submit_and_reap(0)),
                       (13, parent_ring.submit),
                       (14, lambda: parent_ring.submit_and_reap(0.01))):
        try:
            call()
            return code
        except RingClosedError:
            pass
    try:
        if os.fstat(parent_fd).st_ino == parent_ino:
            return 15          # the child still holds the parent's ring open
    except OSError:
        pass
    with Ring(8) as own:
        nop(own, 31)
        if _reap(own, 1, timeout=5) != [(31, 0, 0)]:
            return 16
    return 0


def _fork_and_wait(fn, timeout=20.0):
    pid = os.fork()
    if pid == 0:
        # Never return into pytest in the child, whatever happens.
        code = 99
        try:
            code = fn()
        except BaseException:
            code = 98
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("forked child hung")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"forked child died from signal {os.WTERMSIG(status)}")
    return os.WEXITSTATUS(status)


@pytest.mark.parametrize("backing", ["thp", "pages", "kernel"])
@pytest.mark.parametrize("enabled", [False, True])
def test_forked_child_gets_ring_closed_and_can_make_its_own(backing, enabled):
    r = _make(backing)
    try:
        if enabled:
            _roundtrip(r)
        fd, ino = r.fd, os.fstat(r.fd).st_ino
        code = _fork_and_wait(lambda: _child_checks(r, fd, ino))
        assert code == 0, f"child check {code} failed"
        # The parent's ring is untouched by the child's exit.
        assert not r.closed
        _roundtrip(r, 5)
    finally:
        r.close()


# ---- provided buffer ring --------------------------------------------------

def test_buffer_ring_recv_picks_a_buffer_and_recycles(ring):
    if not ring.supports(OP["RECV"]):
        pytest.skip("no IORING_OP_RECV")
    try:
        br = ring.buffer_ring(7, 4, 64)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("kernel without IORING_REGISTER_PBUF_RING (5.19)")
        raise
    a, b = socket.socketpair()
    try:
        def recv(ud):
            ring.prep(OP["RECV"], b.fileno(), ring.null, 0, 0, 0, ud,
                      sqe_flags=_lib.IOSQE_BUFFER_SELECT, buf_index=7)
            (cqe,) = _reap(ring, 1)
            return cqe

        used = []
        for i in range(4):
            msg = f"message {i}".encode()
            a.send(msg)
            ud, res, flags = recv(100 + i)
            assert (ud, res) == (100 + i, len(msg))
            assert flags & _lib.IORING_CQE_F_BUFFER
            bid = flags >> _lib.IORING_CQE_BUFFER_SHIFT
            assert br.read(bid, res) == msg
            assert bytes(br.view(bid, res)) == msg
            used.append(bid)
        assert sorted(used) == [0, 1, 2, 3]

        # All four buffers are ours now: the kernel has none to pick.
        a.send(b"late data")
        _, res, flags = recv(200)
        assert res == -errno.ENOBUFS
        assert not flags & _lib.IORING_CQE_F_BUFFER

        # Give one back: the data still waiting in the socket lands in it.
        br.recycle(used[2])
        _, res, flags = recv(201)
        assert res == len(b"late data")
        assert flags >> _lib.IORING_CQE_BUFFER_SHIFT == used[2]
        assert br.read(used[2], res) == b"late data"

        with pytest.raises(ValueError):
            ring.buffer_ring(7, 4, 64)
    finally:
        a.close()
        b.close()
        br.close()
    ring.buffer_ring(7, 2, 16).close()   # the group id is free again


def test_receive_buffers_start_half_a_page_in(ring):
    # Regression (a 2x slowdown of BufferedProtocol echo at 64 KiB): copying
    # out of a page-aligned receive buffer into a malloc'd bytearray, which
    # starts 16 bytes into its page, hits AMD's rep-movsb 4K-aliasing case and
    # ran 14x slower than any other alignment. The buffers now start 2 KiB in.
    try:
        br = ring.buffer_ring(9, 8, 65536)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("kernel without IORING_REGISTER_PBUF_RING (5.19)")
        raise
    try:
        for bid in range(8):
            address = int(ring.cast("uintptr_t", br._base + bid * br.buffer_size))
            assert address % 4096 == 2048
        view = br.view(7, 65536)
        view[-1:] = b"x"   # the last buffer ends inside the mapping
        assert br.read(7, 65536)[-1:] == b"x"
    finally:
        br.close()


@pytest.mark.parametrize("entries,size", [(0, 64), (3, 64), (65536, 64), (4, 0)])
def test_buffer_ring_bad_shapes_are_refused(ring, entries, size):
    with pytest.raises(ValueError):
        ring.buffer_ring(1, entries, size)


# A late CQE can carry a buffer id after its buffer ring (or the whole ring)
# was closed; giving it back must raise, not crash. Run in a child process so
# that a crash fails this test instead of killing the test run.
_LATE_BUFFER = """
import sys
from aiouring.ring import Ring
from aiouring.errors import RingClosedError
r = Ring(8)
br = r.buffer_ring(1, 4, 64)
if sys.argv[1] == "ring":
    r.close()
else:
    br.close()
for call in (lambda: br.recycle(0), lambda: br.read(0, 4), lambda: br.view(0, 4)):
    try:
        call()
        sys.exit(3)
    except RingClosedError:
        pass
"""


@pytest.mark.parametrize("closed", ["buffer_ring", "ring"])
def test_buffer_ring_used_after_close_raises_instead_of_crashing(closed):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _LATE_BUFFER, closed], capture_output=True, timeout=30)
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode()[-2000:])


def test_forked_child_cannot_touch_the_parents_buffer_ring(ring):
    br = ring.buffer_ring(2, 4, 64)

    def child():
        for call in (lambda: br.recycle(0), lambda: br.read(0, 4)):
            try:
                call()
                return 20
            except RingClosedError:
                pass
        return 0
    assert _fork_and_wait(child) == 0
    br.recycle(0)       # the parent's is untouched


def test_buffer_ring_refuses_ids_and_lengths_it_never_handed_out(ring):
    br = ring.buffer_ring(4, 4, 64)
    # A bid beyond the ring would point the kernel at memory that is not a
    # buffer, and the next recv would write there.
    for bid in (4, 1000, -1):
        with pytest.raises((ValueError, OverflowError)):
            br.recycle(bid)
    for bid, length in ((4, 1), (-1, 1), (0, 65), (0, -1)):
        with pytest.raises(ValueError):
            br.read(bid, length)
        with pytest.raises(ValueError):
            br.view(bid, length)
    assert br.read(3, 64) == bytes(64)


# Regression: with the ring fd registered (REGISTER_RING_FDS) in the owner
# thread, close() from another thread left the ring and its in-flight
# operations alive until the owner thread exited. The fd is no longer registered.
def test_close_from_another_thread_releases_the_ring():
    r = Ring(8)
    a, b = socket.socketpair()
    buf = bytearray(16)
    ptr = r.pointer(buf, writable=True)
    armed, done = threading.Event(), threading.Event()

    def owner():
        r.prep(OP["RECV"], b.fileno(), ptr, len(buf), 0, 0, 1)
        r.submit()
        armed.set()
        done.wait(20)
    t = threading.Thread(target=owner)
    t.start()
    try:
        assert armed.wait(10)
        # Only the in-flight RECV holds b's socket open now; once the ring is
        # really gone the request is cancelled and the peer sees EOF.
        b.close()
        r.close()
        a.settimeout(1.0)
        try:
            eof = a.recv(1) == b""
        except socket.timeout:
            eof = False
        assert eof, "the ring outlived close() from a non-owner thread"
    finally:
        done.set()
        t.join(20)
        a.close()
