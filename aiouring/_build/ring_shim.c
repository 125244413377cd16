/* aiouring's C layer: the io_uring kernel ABI, declared here from the UAPI
 * (the system's <linux/io_uring.h> may predate NO_MMAP and lacks user_addr),
 * spoken with raw syscalls, no liburing.
 *
 * Contract: every function returns 0 / a count on success and -errno on
 * failure. Nothing here raises, touches Python objects, or leaves errno set
 * for the caller to interpret: ring.py turns -errno into OSError in one place.
 *
 * user_data is taken as int64_t, the type it comes back as in the reaped
 * int64_t triples: every value Python can pass in returns unchanged (an
 * unsigned parameter would accept 2**63.. and hand it back negative).
 *
 * Memory model: the SQ tail and CQ head are ours, the SQ head and CQ tail are
 * the kernel's. We publish our side with release stores and read the kernel's
 * with acquire loads, as the io_uring ABI requires on weakly ordered CPUs. */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <signal.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_DONTFORK
#define MADV_DONTFORK 10
#endif

#define AIOU_VERSION_STAMP AIOU_PACKAGE_VERSION   /* -D from ring_build.py */

/* ---- kernel UAPI (include/uapi/linux/io_uring.h), written from the ABI ---- */

#define IORING_SETUP_CQSIZE          (1U << 3)
#define IORING_SETUP_CLAMP           (1U << 4)
#define IORING_SETUP_R_DISABLED      (1U << 6)
#define IORING_SETUP_SUBMIT_ALL      (1U << 7)
#define IORING_SETUP_COOP_TASKRUN    (1U << 8)
#define IORING_SETUP_TASKRUN_FLAG    (1U << 9)
#define IORING_SETUP_SINGLE_ISSUER   (1U << 12)
#define IORING_SETUP_DEFER_TASKRUN   (1U << 13)
#define IORING_SETUP_NO_MMAP         (1U << 14)
#define IORING_SETUP_NO_SQARRAY      (1U << 16)

#define IORING_FEAT_SINGLE_MMAP      (1U << 0)
#define IORING_FEAT_NODROP           (1U << 1)
#define IORING_FEAT_SUBMIT_STABLE    (1U << 2)
#define IORING_FEAT_FAST_POLL        (1U << 5)
#define IORING_FEAT_EXT_ARG          (1U << 8)
#define IORING_FEAT_NATIVE_WORKERS   (1U << 9)
#define IORING_FEAT_CQE_SKIP         (1U << 11)
#define IORING_FEAT_REG_REG_RING     (1U << 13)
#define IORING_FEAT_RECVSEND_BUNDLE  (1U << 14)
#define IORING_FEAT_MIN_TIMEOUT      (1U << 15)

#define IORING_OP_NOP            0
#define IORING_OP_READV          1
#define IORING_OP_READ_FIXED     4
#define IORING_OP_WRITE_FIXED    5
#define IORING_OP_WRITEV         2
#define IORING_OP_FSYNC          3
#define IORING_OP_POLL_ADD       6
#define IORING_OP_POLL_REMOVE    7
#define IORING_OP_SENDMSG        9
#define IORING_OP_RECVMSG        10
#define IORING_OP_TIMEOUT        11
#define IORING_OP_ACCEPT         13
#define IORING_OP_ASYNC_CANCEL   14
#define IORING_OP_CONNECT        16
#define IORING_OP_FALLOCATE      17
#define IORING_OP_OPENAT         18
#define IORING_OP_CLOSE          19
#define IORING_OP_STATX          21
#define IORING_OP_READ           22
#define IORING_OP_WRITE          23
#define IORING_OP_SEND           26
#define IORING_OP_RECV           27
#define IORING_OP_SPLICE         30
#define IORING_OP_SHUTDOWN       34
#define IORING_OP_RENAMEAT       35
#define IORING_OP_UNLINKAT       36
#define IORING_OP_MKDIRAT        37
#define IORING_OP_SYMLINKAT      38
#define IORING_OP_LINKAT         39
#define IORING_OP_SOCKET         45
#define IORING_OP_SEND_ZC        47
#define IORING_OP_WAITID         50
#define IORING_OP_FTRUNCATE      55
#define IORING_OP_LAST_KNOWN     64   /* probe table size we ask for */

#define IOSQE_IO_LINK            (1U << 2)
#define IOSQE_ASYNC              (1U << 4)
#define IOSQE_BUFFER_SELECT      (1U << 5)
#define IOSQE_CQE_SKIP_SUCCESS   (1U << 6)

#define IORING_CQE_F_BUFFER      (1U << 0)
#define IORING_CQE_F_MORE        (1U << 1)
#define IORING_CQE_BUFFER_SHIFT  16

#define IORING_POLL_ADD_MULTI    (1U << 0)
#define IORING_ASYNC_CANCEL_ALL  (1U << 0)
#define IORING_ASYNC_CANCEL_FD   (1U << 1)
#define IORING_ASYNC_CANCEL_ANY  (1U << 2)
#define IORING_ACCEPT_MULTISHOT  (1U << 0)
#define IORING_RECVSEND_POLL_FIRST (1U << 0)
#define IORING_RECV_MULTISHOT    (1U << 1)
#define IORING_FSYNC_DATASYNC    (1U << 0)
#define IORING_TIMEOUT_ABS       (1U << 0)

#define IORING_SQ_CQ_OVERFLOW    (1U << 1)
#define IORING_SQ_TASKRUN        (1U << 2)

#define IORING_ENTER_GETEVENTS       (1U << 0)
#define IORING_ENTER_EXT_ARG         (1U << 3)
#define IORING_ENTER_REGISTERED_RING (1U << 4)

#define IORING_REGISTER_BUFFERS        0
#define IORING_UNREGISTER_BUFFERS      1
#define IORING_REGISTER_PROBE          8
#define IORING_REGISTER_ENABLE_RINGS   12
#define IORING_REGISTER_RING_FDS       20
#define IORING_UNREGISTER_RING_FDS     21
#define IORING_REGISTER_PBUF_RING      22
#define IORING_UNREGISTER_PBUF_RING    23

#define IORING_OFF_SQ_RING  0ULL
#define IORING_OFF_SQES     0x10000000ULL

#define IO_URING_OP_SUPPORTED (1U << 0)

struct aiou_sqe {
    uint8_t  opcode;
    uint8_t  flags;
    uint16_t ioprio;
    int32_t  fd;
    uint64_t off;          /* also addr2 */
    uint64_t addr;         /* also splice_off_in */
    uint32_t len;
    uint32_t op_flags;     /* rw_flags, msg_flags, poll32_events, open_flags, ... */
    uint64_t user_data;
    uint16_t buf_index;    /* also buf_group */
    uint16_t personality;
    int32_t  file_index;   /* also splice_fd_in, addr_len */
    uint64_t addr3;
    uint64_t pad2;
};

struct aiou_cqe {
    uint64_t user_data;
    int32_t  res;
    uint32_t flags;
};

struct aiou_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct aiou_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct aiou_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct aiou_sqring_offsets sq_off;
    struct aiou_cqring_offsets cq_off;
};

struct aiou_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};

struct aiou_timespec {
    int64_t tv_sec;
    long long tv_nsec;
};

struct aiou_rsrc_update {
    uint32_t offset;
    uint32_t resv;
    uint64_t data;
};

struct aiou_probe_op {
    uint8_t op, resv;
    uint16_t flags;
    uint32_t resv2;
};

struct aiou_probe {
    uint8_t last_op, ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct aiou_probe_op ops[IORING_OP_LAST_KNOWN];
};

struct aiou_buf {
    uint64_t addr;
    uint32_t len;
    uint16_t bid;
    uint16_t resv;         /* in entry 0 this is the ring's tail */
};

struct aiou_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

_Static_assert(sizeof(struct aiou_sqe) == 64, "SQE is 64 bytes");
_Static_assert(sizeof(struct aiou_cqe) == 16, "CQE is 16 bytes");
_Static_assert(sizeof(struct aiou_params) == 120, "io_uring_params is 120 bytes");
_Static_assert(sizeof(struct aiou_buf) == 16, "io_uring_buf is 16 bytes");

/* ---- aiouring's own state ---- */

enum { AIOU_BACKING_HUGETLB = 1, AIOU_BACKING_THP = 2, AIOU_BACKING_PAGES = 3, AIOU_BACKING_KERNEL = 4 };

#define HUGE_2MB (2UL * 1024 * 1024)

struct aiou_ring {
    int fd;
    int enter_fd;
    unsigned enter_flags;
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    int backing;
    size_t mem_size;
    size_t rings_size;
    size_t sqes_size;
    void *mem;
    uint64_t enters;
    uint64_t sqes_submitted;
    uint64_t cqes_reaped;
    uint64_t overflow_flushes;
    uint64_t sq_full_flushes;

    /* private to C */
    unsigned *sq_head, *sq_tail, *sq_flags, *sq_array;
    unsigned sq_mask;
    unsigned sqe_tail;               /* next SQE we fill; published on submit */
    struct aiou_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_overflow;
    unsigned cq_mask;
    struct aiou_cqe *cqes;
    void *kring_ptr;                 /* kernel backing: the mmapped rings */
    size_t kring_size;
    void *ksqes_ptr;
    size_t ksqes_size;
    struct aiou_timespec *ts_slots;  /* one per SQ slot, for TIMEOUT SQEs */
    int registered_index;            /* -1 when the ring fd is not registered */
    pid_t registered_tid;
};

struct aiou_pbuf {
    uint16_t bgid;
    unsigned entries;
    unsigned buf_size;
    char *base;
    struct aiou_buf *ring;
    size_t ring_bytes;
    char *base_mapping;    /* what mmap returned: base is PBUF_PAGE_OFFSET into it */
    size_t base_bytes;
    uint16_t tail;
    uint16_t mask;
};

void aiou_ring_free(struct aiou_ring *r);

static inline unsigned load_acquire(const unsigned *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(unsigned *p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int sys_setup(unsigned entries, struct aiou_params *p)
{
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
    return r < 0 ? -errno : (int)r;
}

static int sys_register(int fd, unsigned opcode, void *arg, unsigned nr)
{
    long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr);
    return r < 0 ? -errno : (int)r;
}

static unsigned roundup_pow2(unsigned v)
{
    unsigned p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static size_t page_align(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (n + page - 1) & ~(page - 1);
}

/* The kernel's rings_size(): the io_rings header (64 bytes on every kernel
 * that has NO_MMAP), the CQE array, aligned to a cache line, then the SQ index
 * array unless NO_SQARRAY. Computed, never hard-coded as offsets: the offsets
 * themselves are read back from the kernel after setup. */
static size_t rings_bytes(unsigned sq, unsigned cq, unsigned flags)
{
    size_t off = 64 + (size_t)cq * sizeof(struct aiou_cqe);
    off = (off + 63) & ~(size_t)63;
    if (!(flags & IORING_SETUP_NO_SQARRAY))
        off += (size_t)sq * sizeof(uint32_t);
    return off;
}

size_t aiou_ring_layout_size(unsigned sq_entries, unsigned cq_entries, unsigned flags)
{
    unsigned sq = roundup_pow2(sq_entries);
    unsigned cq = roundup_pow2(cq_entries ? cq_entries : 2 * sq);
    return page_align(rings_bytes(sq, cq, flags)) + page_align((size_t)sq * sizeof(struct aiou_sqe));
}

/* Reserve `size` bytes of ring memory backed as asked. THP needs a 2 MiB
 * aligned range, so we over-map and trim. Returns the mapping or NULL with
 * *err set; *mapped is the length to munmap later. */
static void *alloc_ring_memory(int backing, size_t size, size_t *mapped, int *err)
{
    void *p;
    size_t huge_size = (size + HUGE_2MB - 1) & ~(HUGE_2MB - 1);

    if (backing == AIOU_BACKING_HUGETLB) {
        p = mmap(NULL, huge_size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED) { *err = -errno; return NULL; }
        *mapped = huge_size;
    } else if (backing == AIOU_BACKING_THP) {
        size_t span = huge_size + HUGE_2MB;
        char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) { *err = -errno; return NULL; }
        char *aligned = (char *)(((uintptr_t)raw + HUGE_2MB - 1) & ~(uintptr_t)(HUGE_2MB - 1));
        if (aligned > raw)
            munmap(raw, (size_t)(aligned - raw));
        size_t tail = (size_t)((raw + span) - (aligned + huge_size));
        if (tail)
            munmap(aligned + huge_size, tail);
        if (madvise(aligned, huge_size, MADV_HUGEPAGE) != 0) {
            *err = -errno;
            munmap(aligned, huge_size);
            return NULL;
        }
        p = aligned;
        *mapped = huge_size;
    } else {
        size_t n = page_align(size);
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED) { *err = -errno; return NULL; }
        *mapped = n;
    }
    /* Touch every page now, so THP faults in a huge page and nothing faults
     * later inside the kernel's pinning. */
    memset(p, 0, *mapped);
    /* A forked child must not share the ring through this memory. */
    madvise(p, *mapped, MADV_DONTFORK);
    return p;
}

static void setup_pointers(struct aiou_ring *r, struct aiou_params *p, char *rings, char *sqes)
{
    r->sq_head = (unsigned *)(rings + p->sq_off.head);
    r->sq_tail = (unsigned *)(rings + p->sq_off.tail);
    r->sq_flags = (unsigned *)(rings + p->sq_off.flags);
    r->sq_mask = *(unsigned *)(rings + p->sq_off.ring_mask);
    r->sq_array = (r->setup_flags & IORING_SETUP_NO_SQARRAY) ? NULL : (unsigned *)(rings + p->sq_off.array);
    r->cq_head = (unsigned *)(rings + p->cq_off.head);
    r->cq_tail = (unsigned *)(rings + p->cq_off.tail);
    r->cq_overflow = (unsigned *)(rings + p->cq_off.overflow);
    r->cq_mask = *(unsigned *)(rings + p->cq_off.ring_mask);
    r->cqes = (struct aiou_cqe *)(rings + p->cq_off.cqes);
    r->sqes = (struct aiou_sqe *)sqes;
    r->sqe_tail = *r->sq_tail;
    if (r->sq_array) {
        /* Identity map: SQE i is always at slot i, so the array is written once. */
        for (unsigned i = 0; i < r->sq_entries; i++)
            r->sq_array[i] = i;
    }
}

static int init_kernel_backed(struct aiou_ring *r, struct aiou_params *p, unsigned sq)
{
    int fd = sys_setup(sq, p);
    if (fd < 0)
        return fd;
    size_t sq_ring = (r->setup_flags & IORING_SETUP_NO_SQARRAY)
        ? p->sq_off.flags + sizeof(unsigned)
        : p->sq_off.array + p->sq_entries * sizeof(unsigned);
    size_t cq_ring = p->cq_off.cqes + p->cq_entries * sizeof(struct aiou_cqe);
    size_t ring_sz = sq_ring > cq_ring ? sq_ring : cq_ring;
    if (!(p->features & IORING_FEAT_SINGLE_MMAP)) {
        close(fd);
        return -ENOSYS;   /* pre-5.4 kernels: not supported */
    }
    void *rings = mmap(NULL, ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (rings == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    size_t sqes_sz = p->sq_entries * sizeof(struct aiou_sqe);
    void *sqes = mmap(NULL, sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        int e = -errno;
        munmap(rings, ring_sz);
        close(fd);
        return e;
    }
    madvise(rings, ring_sz, MADV_DONTFORK);
    madvise(sqes, sqes_sz, MADV_DONTFORK);
    r->fd = fd;
    r->kring_ptr = rings;
    r->kring_size = ring_sz;
    r->ksqes_ptr = sqes;
    r->ksqes_size = sqes_sz;
    r->mem_size = ring_sz + sqes_sz;
    return 0;
}

int aiou_ring_init(struct aiou_ring *r, unsigned sq_entries, unsigned cq_entries, unsigned flags, int backing)
{
    struct aiou_params p;
    memset(r, 0, sizeof(*r));
    memset(&p, 0, sizeof(p));
    r->fd = -1;
    r->enter_fd = -1;
    r->registered_index = -1;
    if (sq_entries == 0)
        return -EINVAL;
    unsigned sq = roundup_pow2(sq_entries);
    unsigned cq = roundup_pow2(cq_entries ? cq_entries : 2 * sq);
    if (cq < sq)
        return -EINVAL;
    flags |= IORING_SETUP_CQSIZE;
    p.cq_entries = cq;
    r->backing = backing;

    if (backing == AIOU_BACKING_KERNEL) {
        flags &= ~IORING_SETUP_NO_MMAP;
        p.flags = flags;
        r->setup_flags = flags;
        int rc = init_kernel_backed(r, &p, sq);
        if (rc < 0)
            return rc;
        r->sq_entries = p.sq_entries;
        r->cq_entries = p.cq_entries;
        r->rings_size = r->kring_size;
        r->sqes_size = r->ksqes_size;
        setup_pointers(r, &p, r->kring_ptr, r->ksqes_ptr);
    } else {
        flags |= IORING_SETUP_NO_MMAP;
        size_t rings_sz = page_align(rings_bytes(sq, cq, flags));
        size_t sqes_sz = page_align((size_t)sq * sizeof(struct aiou_sqe));
        size_t mapped = 0;
        int err = 0;
        char *mem = alloc_ring_memory(backing, rings_sz + sqes_sz, &mapped, &err);
        if (!mem)
            return err;
        /* Rings first, SQEs right after, both page aligned, in one mapping:
         * with a huge page both regions share one TLB entry. */
        p.flags = flags;
        p.cq_off.user_addr = (uint64_t)(uintptr_t)mem;
        p.sq_off.user_addr = (uint64_t)(uintptr_t)(mem + rings_sz);
        int fd = sys_setup(sq, &p);
        if (fd < 0) {
            munmap(mem, mapped);
            return fd;
        }
        r->fd = fd;
        r->mem = mem;
        r->mem_size = mapped;
        r->rings_size = rings_sz;
        r->sqes_size = sqes_sz;
        r->setup_flags = flags;
        r->sq_entries = p.sq_entries;
        r->cq_entries = p.cq_entries;
        setup_pointers(r, &p, mem, mem + rings_sz);
    }
    r->features = p.features;
    r->enter_fd = r->fd;
    r->ts_slots = calloc(r->sq_entries, sizeof(struct aiou_timespec));
    if (!r->ts_slots) {
        aiou_ring_free(r);
        return -ENOMEM;
    }
    return 0;
}

int aiou_enable(struct aiou_ring *r, int register_ring_fd)
{
    if (r->fd < 0)
        return -EBADF;
    if (r->setup_flags & IORING_SETUP_R_DISABLED) {
        int rc = sys_register(r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
        if (rc < 0)
            return rc;
        r->setup_flags &= ~IORING_SETUP_R_DISABLED;
    }
    if (register_ring_fd && r->registered_index < 0) {
        struct aiou_rsrc_update up = { .offset = (uint32_t)-1, .resv = 0, .data = (uint64_t)r->fd };
        int rc = sys_register(r->fd, IORING_REGISTER_RING_FDS, &up, 1);
        if (rc == 1) {
            r->registered_index = (int)up.offset;
            r->registered_tid = (pid_t)syscall(SYS_gettid);
            r->enter_fd = (int)up.offset;
            r->enter_flags = IORING_ENTER_REGISTERED_RING;
        }
        /* Failure to register is not an error: we just keep using the fd. */
    }
    return 0;
}

void aiou_ring_free(struct aiou_ring *r)
{
    if (r->registered_index >= 0 && r->registered_tid == (pid_t)syscall(SYS_gettid)) {
        /* The registered slot holds a reference to the ring file; without
         * this the ring would outlive close() until the thread exits. */
        struct aiou_rsrc_update up = { .offset = (uint32_t)r->registered_index, .resv = 0, .data = 0 };
        sys_register(r->fd, IORING_UNREGISTER_RING_FDS, &up, 1);
    }
    r->registered_index = -1;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->enter_fd = -1;
    /* Our pages stay pinned by the kernel until its teardown finishes, so
     * unmapping our view now is safe. */
    if (r->mem)
        munmap(r->mem, r->mem_size);
    if (r->kring_ptr)
        munmap(r->kring_ptr, r->kring_size);
    if (r->ksqes_ptr)
        munmap(r->ksqes_ptr, r->ksqes_size);
    r->mem = r->kring_ptr = r->ksqes_ptr = NULL;
    r->sqes = NULL;
    r->cqes = NULL;
    free(r->ts_slots);
    r->ts_slots = NULL;
}

static inline struct aiou_sqe *next_sqe(struct aiou_ring *r)
{
    unsigned head = load_acquire(r->sq_head);
    if (r->sqe_tail - head >= r->sq_entries)
        return NULL;
    struct aiou_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    r->sqe_tail++;
    return sqe;
}

unsigned aiou_sq_pending(struct aiou_ring *r) { return r->sqes ? r->sqe_tail - load_acquire(r->sq_head) : 0; }
unsigned aiou_sq_space(struct aiou_ring *r) { return r->sqes ? r->sq_entries - aiou_sq_pending(r) : 0; }
unsigned aiou_cq_ready(struct aiou_ring *r) { return r->cqes ? load_acquire(r->cq_tail) - *r->cq_head : 0; }
unsigned aiou_sq_flags(struct aiou_ring *r) { return r->sqes ? load_acquire(r->sq_flags) : 0; }

int aiou_prep(struct aiou_ring *r, uint8_t opcode, int32_t fd, void *addr, uint32_t len,
              uint64_t off, uint32_t op_flags, int64_t user_data, uint8_t sqe_flags,
              uint16_t buf_index, uint16_t ioprio, int32_t file_index)
{
    if (!r->sqes)
        return -EBADF;
    struct aiou_sqe *sqe = next_sqe(r);
    if (!sqe)
        return -EBUSY;
    sqe->opcode = opcode;
    sqe->flags = sqe_flags;
    sqe->ioprio = ioprio;
    sqe->fd = fd;
    sqe->off = off;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->op_flags = op_flags;
    sqe->user_data = (uint64_t)user_data;
    sqe->buf_index = buf_index;
    sqe->personality = 0;
    sqe->file_index = file_index;
    sqe->addr3 = 0;
    sqe->pad2 = 0;
    return 0;
}

int aiou_prep2(struct aiou_ring *r, uint8_t opcode, int32_t fd, void *addr, uint32_t len,
               void *addr2, uint32_t op_flags, int64_t user_data, uint8_t sqe_flags,
               int32_t file_index)
{
    return aiou_prep(r, opcode, fd, addr, len, (uint64_t)(uintptr_t)addr2, op_flags, user_data,
                     sqe_flags, 0, 0, file_index);
}

int aiou_prep_u64(struct aiou_ring *r, uint8_t opcode, int32_t fd, uint64_t addr, uint32_t len,
                  uint64_t off, uint32_t op_flags, int64_t user_data, uint8_t sqe_flags)
{
    return aiou_prep(r, opcode, fd, (void *)(uintptr_t)addr, len, off, op_flags, user_data,
                     sqe_flags, 0, 0, 0);
}

int aiou_prep_timeout(struct aiou_ring *r, int64_t ns, int64_t user_data, uint32_t timeout_flags)
{
    if (!r->sqes)
        return -EBADF;
    unsigned index = r->sqe_tail & r->sq_mask;
    struct aiou_sqe *sqe = next_sqe(r);
    if (!sqe)
        return -EBUSY;
    /* The kernel copies the timespec when it consumes the SQE, so one slot
     * per SQ entry, reused with the entry, keeps it valid long enough. */
    struct aiou_timespec *ts = &r->ts_slots[index];
    memset(sqe, 0, sizeof(*sqe));
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
    sqe->opcode = IORING_OP_TIMEOUT;
    sqe->fd = -1;
    sqe->addr = (uint64_t)(uintptr_t)ts;
    sqe->len = 1;
    sqe->op_flags = timeout_flags;
    sqe->user_data = (uint64_t)user_data;
    return 0;
}

static inline unsigned reap_into(struct aiou_ring *r, int64_t *out, unsigned max)
{
    unsigned head = *r->cq_head;
    unsigned tail = load_acquire(r->cq_tail);
    unsigned n = 0;
    while (head != tail && n < max) {
        const struct aiou_cqe *cqe = &r->cqes[head & r->cq_mask];
        out[3 * n] = (int64_t)cqe->user_data;
        out[3 * n + 1] = cqe->res;
        out[3 * n + 2] = cqe->flags;
        head++;
        n++;
    }
    store_release(r->cq_head, head);
    r->cqes_reaped += n;
    return n;
}

static int enter(struct aiou_ring *r, unsigned to_submit, unsigned wait_nr, int64_t timeout_ns)
{
    struct aiou_timespec ts;
    struct aiou_getevents_arg arg;
    unsigned flags = IORING_ENTER_GETEVENTS | r->enter_flags;
    void *argp = NULL;
    size_t argsz = 0;
    if (wait_nr && timeout_ns >= 0 && (r->features & IORING_FEAT_EXT_ARG)) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        memset(&arg, 0, sizeof(arg));
        arg.ts = (uint64_t)(uintptr_t)&ts;
        argp = &arg;
        argsz = sizeof(arg);
        flags |= IORING_ENTER_EXT_ARG;
    }
    r->enters++;
    int rc = sys_enter(r->enter_fd, to_submit, wait_nr, flags, argp, argsz);
    if ((rc == -EINVAL || rc == -EBADF) && (flags & IORING_ENTER_REGISTERED_RING)) {
        /* A registered ring index exists only in the io_uring context of the
         * thread that registered it; from any other thread it is EINVAL (no
         * context) or EBADF (no such slot), which says nothing about the
         * ring. Ask again by the real fd, so that the kernel answers for the
         * ring itself: EEXIST when SINGLE_ISSUER forbids this thread. */
        r->enters++;
        rc = sys_enter(r->fd, to_submit, wait_nr, flags & ~IORING_ENTER_REGISTERED_RING, argp, argsz);
    }
    if (rc > 0)
        r->sqes_submitted += (unsigned)rc;
    return rc;
}

int aiou_submit(struct aiou_ring *r)
{
    if (!r->sqes)
        return -EBADF;
    unsigned pending = r->sqe_tail - load_acquire(r->sq_head);
    if (!pending)
        return 0;
    store_release(r->sq_tail, r->sqe_tail);
    int rc;
    do {
        rc = enter(r, pending, 0, -1);
    } while (rc == -EINTR);
    return rc;
}

/* One loop iteration's kernel work: publish queued SQEs, wait (when asked)
 * for a completion or the timeout in the same io_uring_enter, then copy every
 * ready CQE into `out` as (user_data, res, flags) triples. Returns the number
 * of CQEs copied or -errno for a failure the caller must see. Expected
 * outcomes of the wait (ETIME, EINTR) and back-pressure (EBUSY, EAGAIN) are
 * not failures: the caller just gets what is ready. */
int aiou_submit_and_reap(struct aiou_ring *r, unsigned wait_nr, int64_t timeout_ns, int64_t *out, unsigned max_cqes)
{
    if (!r->sqes)
        return -EBADF;
    unsigned pending = r->sqe_tail - load_acquire(r->sq_head);
    unsigned ready = load_acquire(r->cq_tail) - *r->cq_head;
    unsigned sqflags = load_acquire(r->sq_flags);
    if (ready)
        wait_nr = 0;
    int need_taskrun = (r->setup_flags & IORING_SETUP_DEFER_TASKRUN) &&
        (!(r->setup_flags & IORING_SETUP_TASKRUN_FLAG) || (sqflags & IORING_SQ_TASKRUN));
    if (pending || wait_nr || need_taskrun || (sqflags & IORING_SQ_CQ_OVERFLOW)) {
        if (pending)
            store_release(r->sq_tail, r->sqe_tail);
        int rc = enter(r, pending, wait_nr, timeout_ns);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
            return rc;
    }
    unsigned n = reap_into(r, out, max_cqes);
    /* CQEs the kernel held back for lack of CQ space (FEAT_NODROP) are only
     * flushed into the ring by another enter; do it while we have room. */
    while (n < max_cqes && (load_acquire(r->sq_flags) & IORING_SQ_CQ_OVERFLOW)) {
        r->overflow_flushes++;
        int rc = enter(r, 0, 0, -1);
        if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
            break;
        unsigned more = reap_into(r, out + 3 * n, max_cqes - n);
        if (!more)
            break;
        n += more;
    }
    return (int)n;
}

int aiou_reap(struct aiou_ring *r, int64_t *out, unsigned max_cqes)
{
    if (!r->cqes)
        return -EBADF;
    return (int)reap_into(r, out, max_cqes);
}

int aiou_register_buffers(struct aiou_ring *r, struct iovec *iovs, unsigned n)
{
    return sys_register(r->fd, IORING_REGISTER_BUFFERS, iovs, n);
}

int aiou_unregister_buffers(struct aiou_ring *r)
{
    return sys_register(r->fd, IORING_UNREGISTER_BUFFERS, NULL, 0);
}

int aiou_probe(struct aiou_ring *r, uint8_t *supported, unsigned n)
{
    struct aiou_probe probe;
    memset(&probe, 0, sizeof(probe));
    int rc = sys_register(r->fd, IORING_REGISTER_PROBE, &probe, IORING_OP_LAST_KNOWN);
    if (rc < 0)
        return rc;
    unsigned count = probe.ops_len < n ? probe.ops_len : n;
    for (unsigned i = 0; i < count; i++)
        supported[probe.ops[i].op < n ? probe.ops[i].op : 0] |= (probe.ops[i].flags & IO_URING_OP_SUPPORTED) ? 1 : 0;
    return (int)probe.last_op;
}

/* Where the receive buffers start within their first page. Copying out of
 * a buffer into memory that sits 8-31 bytes past it modulo 4 KiB runs about
 * 14 times slower on AMD Zen (rep movsb "4K aliasing": measured 23 us instead
 * of 1.7 us for 64 KiB here). Large bytearrays and other malloc'd buffers
 * usually start 16 bytes into a page, so page-aligned receive buffers hit
 * exactly that case when a BufferedProtocol's buffer is the destination;
 * half a page away, common destinations are far from it. */
#define PBUF_PAGE_OFFSET 2048

/* Put buffer `bid` (`buf_size` bytes at `addr`) at the ring's tail and
 * publish it: the kernel may pick it from then on. */
static void pbuf_push(struct aiou_pbuf *pb, uint16_t bid, char *addr)
{
    struct aiou_buf *b = &pb->ring[pb->tail & pb->mask];
    b->addr = (uint64_t)(uintptr_t)addr;
    b->len = pb->buf_size;
    b->bid = bid;
    pb->tail++;
    __atomic_store_n(&pb->ring[0].resv, pb->tail, __ATOMIC_RELEASE);
}

/* A provided-buffer ring of `entries` buffers of `buf_size` bytes. With
 * `provide`, the buffers are ours (one mapping) and all go into the ring now;
 * without, the caller owns the buffer memory and hands each buffer in with
 * aiou_pbuf_provide (aiouring._hotpath receives into bytes objects so that a
 * large chunk becomes the bytes handed to the protocol, without a copy). */
int aiou_pbuf_setup(struct aiou_ring *r, struct aiou_pbuf *pb, uint16_t bgid, unsigned entries, unsigned buf_size,
                    int provide)
{
    memset(pb, 0, sizeof(*pb));
    if (entries == 0 || entries > 32768 || (entries & (entries - 1)) || buf_size == 0)
        return -EINVAL;
    pb->ring_bytes = page_align(entries * sizeof(struct aiou_buf));
    void *ring = mmap(NULL, pb->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED)
        return -errno;
    char *mapping = NULL;
    if (provide) {
        pb->base_bytes = page_align((size_t)entries * buf_size + PBUF_PAGE_OFFSET);
        mapping = mmap(NULL, pb->base_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapping == MAP_FAILED) {
            int e = -errno;
            munmap(ring, pb->ring_bytes);
            return e;
        }
        madvise(mapping, pb->base_bytes, MADV_DONTFORK);
    }
    madvise(ring, pb->ring_bytes, MADV_DONTFORK);
    struct aiou_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)ring;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int rc = sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1);
    if (rc < 0) {
        munmap(ring, pb->ring_bytes);
        if (mapping)
            munmap(mapping, pb->base_bytes);
        return rc;
    }
    pb->bgid = bgid;
    pb->entries = entries;
    pb->buf_size = buf_size;
    pb->base_mapping = mapping;
    pb->base = mapping ? mapping + PBUF_PAGE_OFFSET : NULL;
    pb->ring = ring;
    pb->mask = (uint16_t)(entries - 1);
    pb->tail = 0;
    if (provide) {
        for (unsigned i = 0; i < entries; i++)
            pbuf_push(pb, (uint16_t)i, pb->base + (size_t)i * buf_size);
    }
    return 0;
}

/* Hand buffer `bid`, `buf_size` bytes at `addr`, to the kernel (rings set up
 * without `provide`). The caller keeps that memory alive and untouched until
 * the buffer comes back in a CQE or the ring is unregistered. A freed ring
 * answers -EBADF before anything else (aiouring._hotpath relies on that). */
int aiou_pbuf_provide(struct aiou_pbuf *pb, uint16_t bid, char *addr)
{
    if (!pb->ring)
        return -EBADF;
    if (bid >= pb->entries || !addr || pb->base)
        return -EINVAL;
    pbuf_push(pb, bid, addr);
    return 0;
}

int aiou_pbuf_recycle(struct aiou_pbuf *pb, uint16_t bid)
{
    /* A freed ring has no memory left to write to; a bid we never handed
     * out would make the kernel receive into whatever lies past the buffers. */
    if (!pb->ring)
        return -EBADF;
    if (bid >= pb->entries || !pb->base)
        return -EINVAL;
    pbuf_push(pb, bid, pb->base + (size_t)bid * pb->buf_size);
    return 0;
}

int aiou_pbuf_free(struct aiou_ring *r, struct aiou_pbuf *pb)
{
    int rc = 0;
    if (!pb->ring)
        return 0;
    if (r->fd >= 0) {
        struct aiou_buf_reg reg;
        memset(&reg, 0, sizeof(reg));
        reg.bgid = pb->bgid;
        rc = sys_register(r->fd, IORING_UNREGISTER_PBUF_RING, &reg, 1);
    }
    munmap(pb->ring, pb->ring_bytes);
    if (pb->base_mapping)
        munmap(pb->base_mapping, pb->base_bytes);
    pb->ring = NULL;
    pb->base = NULL;
    pb->base_mapping = NULL;
    return rc;
}

const char *aiou_version(void) { return AIOU_VERSION_STAMP; }

int aiou_siginfo_child(const siginfo_t *info, int *pid, int *code, int *status)
{
    *pid = info->si_pid;
    *code = info->si_code;
    *status = info->si_status;
    return 0;
}

/* In a forked child the ring memory is gone (MADV_DONTFORK) and the ring
 * belongs to the parent: drop our view without touching the memory, and close
 * the child's copy of the fd so it cannot keep the parent's ring alive. */
void aiou_ring_forget(struct aiou_ring *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->enter_fd = -1;
    r->registered_index = -1;
    r->mem = r->kring_ptr = r->ksqes_ptr = NULL;
    r->sqes = NULL;
    r->cqes = NULL;
    r->ts_slots = NULL;   /* heap memory is the child's copy; leaking it is harmless */
}

void aiou_pbuf_forget(struct aiou_pbuf *pb)
{
    pb->ring = NULL;
    pb->base = NULL;
    pb->base_mapping = NULL;
}
